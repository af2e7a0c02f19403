"""What the operator remembers of each policy object between reconciles, and when to retry.

`reconcile.Reconciler` keeps one `Tracked` per policy (by kind, namespace and name) while the
policy exists and drops it when the policy goes, so the memory follows the cluster. Memory
only: after a restart every policy is reconciled once, which rebuilds it. Pure.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

from sluice.operator import proxyconfig, status

Key = tuple[str, str, str]  # kind, namespace, name

# A spec the API server refuses is tried again after 2, 4, 8 ... seconds, at most every 5
# minutes: something else may change (a quota, an admission policy), but hammering helps no one.
RETRY_FIRST_SECONDS = 2.0
RETRY_CAP_SECONDS = 300.0


def retry_delay(failures: int) -> float:
    """Seconds before the next attempt after `failures` failed ones in a row (1 or more)."""
    return min(RETRY_CAP_SECONDS, RETRY_FIRST_SECONDS * 2.0 ** min(failures - 1, 32))


@dataclasses.dataclass
class Tracked:
    """One policy object as the operator last left it."""

    uid: str
    generation: int = 0
    """The generation last reconciled, whatever came of it."""
    applied: int = 0
    """The generation last applied in full: an older one is never applied after it."""
    problem: status.Problem | None = None
    """Why the last reconcile did not apply; None when it did."""
    reported: tuple[str, str] | None = None
    """The (reason, message) last posted as a Warning Event: one Event per distinct problem."""
    failures: int = 0
    """Reconciles in a row that ended in a problem worth retrying."""
    retry: asyncio.Task[None] | None = None
    """The pending retry, if one is scheduled."""
    fingerprints: dict[str, str] = dataclasses.field(default_factory=dict)
    """`ownership.fingerprint` of each child as last applied, by REST path."""
    rendered: proxyconfig.Rendered | None = None
    """The latest spec's config, which names the Secrets (and keys) it reads; None while that
    spec cannot be rendered."""
    secrets_checksum: str | None = None
    """What was last read of them (`Rendered.secrets_checksum`), missing ones included."""
    config_map: str | None = None
    """The name of the ConfigMap the last applied Deployment mounts."""
    pruned_for: str | None = None
    """The ConfigMap for which the older ones were last pruned."""

    def __repr__(self) -> str:
        problem = self.problem.reason if self.problem else "none"
        return (
            f"<Tracked uid={self.uid} generation={self.generation} applied={self.applied}"
            f" problem={problem} failures={self.failures}>"
        )

    def cancel_retry(self) -> None:
        """Cancel a pending retry, unless it is the task asking (a retry that is running)."""
        if self.retry is not None and self.retry is not asyncio.current_task():
            self.retry.cancel()
        self.retry = None


def reported_in(previous: Mapping[str, Any]) -> tuple[str, str] | None:
    """The problem a stored status already shows (its `Degraded` condition), if any: after a
    restart, an Event for it was posted by the operator before."""
    conditions = previous.get("conditions") or []
    degraded: Mapping[str, Any] = next(
        (c for c in conditions if c.get("type") == status.DEGRADED), {}
    )
    if degraded.get("status") != "True":
        return None
    return degraded.get("reason", ""), degraded.get("message", "")
