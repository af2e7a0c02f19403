"""The operator's options (from `sluice operator`'s flags) and the kopf settings it runs with.

Each kopf setting here avoids a known pitfall; the comment says which. `runner` passes the
options to kopf on its `Memo`; the startup handler in `handlers` applies `configure()`.
"""

from __future__ import annotations

import dataclasses
import logging
from importlib import metadata

import kopf

from sluice.api import policies
from sluice.operator import resources

DEFAULT_IMAGE = "ghcr.io/sluice-dev/sluice"
# Unexpected errors in kopf's own handlers (start-up) are retried this often.
RETRY_DELAY_SECONDS = 15.0
SCRAPE_TIMEOUT_SECONDS = 2.0
CRD_WAIT_SECONDS = 60.0


# What the operator makes and watches for drift: (group, version, plural), core group omitted.
CHILDREN: tuple[tuple[str, str] | tuple[str, str, str], ...] = (
    ("apps", "v1", "deployments"),
    ("v1", "configmaps"),
    ("v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
)
MANAGED_SELECTOR = ",".join(f"{key}={value}" for key, value in resources.MANAGED_BY.items())


def default_image() -> str:
    """The image of this very version: the proxy runs from the operator's own image."""
    return f"{DEFAULT_IMAGE}:{metadata.version('sluice-operator')}"


@dataclasses.dataclass(frozen=True)
class Options:
    """What `sluice operator` was asked to do."""

    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    proxy_image: str = dataclasses.field(default_factory=default_image)
    health_port: int = 8080
    metrics_port: int = 9090
    log_level: str = "info"
    # How often the proxy pods' /metrics are read into the policies' status (`podmetrics`).
    scrape_interval_seconds: float = 60.0
    # How often the referenced Secrets are re-read, so a rotated one rolls the pods.
    secret_interval_seconds: float = 30.0

    @property
    def liveness_endpoint(self) -> str:
        return f"http://0.0.0.0:{self.health_port}/healthz"


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings for a single-replica operator that writes only what its CRDs declare."""
    # One replica with the Recreate strategy (the chart), so no peering: peering can freeze a
    # new pod during a rolling update, and it needs cluster-wide peering objects and RBAC.
    settings.peering.standalone = True
    # Watches can stall without an error; ask the server to end each one after 5 minutes and
    # give up on our side a little later, on top of kopf's bookmark-based inactivity timeout.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.execution.default_backoff = RETRY_DELAY_SECONDS
    # The policies have event handlers only, which keep no progress or diff base; should a
    # handler that does ever come back, its state goes to annotations under our own prefix,
    # not to `status.kopf`: the status schema is structural, so the API server would prune
    # kopf's fields and kopf would rerun handlers forever.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=policies.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=policies.GROUP, key="last-handled-configuration"
    )
    # Log lines stay logs: a retry every 15 s would otherwise post an Event each time. The
    # operator posts its own Events, once per new problem (reconcile.Reconciler.settle).
    settings.posting.loggers = False
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "sluice-operator"
    # The chart installs the CRDs before the operator, which waits for them at start-up, and
    # namespaces are named exactly: so no list/watch on CRDs or namespaces is needed (RBAC).
    settings.scanning.disabled = True
    # Watch only our own children, filtered by the API server: without it kopf would list and
    # watch every ConfigMap, Service and Deployment of the cluster to filter them itself.
    for resource in CHILDREN:
        settings.watching.label_selectors[resource] = MANAGED_SELECTOR
