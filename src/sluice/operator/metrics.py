"""Every Prometheus metric the operator exports, with its help text, and the server for them.

Names start `sluice_operator_`; labels come from fixed sets (the two kinds, what triggered a
reconcile, its result, problem reasons), never from object names. The proxy's metrics live in
`sluice.proxy.metrics`; the two processes never share a registry.
"""

from __future__ import annotations

import threading
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Histogram, disable_created_metrics, start_http_server

from sluice.api import policies

# `_created` series double the exposition for no use on a dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Trigger = Literal["policy", "child", "secret", "retry"]
"""What started a reconcile: a policy event, a child's drift, a rotated Secret, a retry."""
reconciles = Counter(
    "sluice_operator_reconciles_total",
    "Reconciles of a policy, by kind, trigger (policy, child, secret, retry) and result "
    "(applied; blocked: a problem the policy's status names, a refused apply included; "
    "superseded: a newer generation won; deleting: left to the garbage collector; "
    "error: the Kubernetes API did not answer, or failed outside an apply).",
    ["kind", "trigger", "result"],
)
# Zero from the start, so the chart's SluiceOperatorReconcileErrors (a rate of `result="error"`)
# reads 0 before the first error, not an absent series. A retry only follows a reconcile that
# was counted already.
for _kind in policies.KINDS:
    for _trigger in ("policy", "child", "secret"):
        reconciles.labels(_kind, _trigger, "error")
reconcile_duration = Histogram(
    "sluice_operator_reconcile_duration_seconds",
    "Time of one reconcile, from reading the policy to writing its status.",
    ["kind"],
    buckets=DURATION_BUCKETS,
)
problems = Counter(
    "sluice_operator_policy_problems_total",
    "Reconciles that found a spec the operator cannot honour, by kind and reason "
    "(InvalidSpec, InvalidConfig, Conflict, SecretNotFound, SecretKeyNotFound, "
    "SecretNotReadable, SpecRejected, ApplyFailed, ApiUnavailable).",
    ["kind", "reason"],
)
api_errors = Counter(
    "sluice_operator_api_errors_total",
    "Calls to the Kubernetes API that failed, by HTTP status (0: no answer).",
    ["status"],
)
status_scrapes = Counter(
    "sluice_operator_status_scrapes_total",
    "Scrapes of proxy pods' /metrics for the policies' status (hit ratio; MCP servers and "
    "tools), by result (ok, failed: no answer in time, or no exposition).",
    ["result"],
)


def serve(port: int, address: str = "0.0.0.0") -> tuple[WSGIServer, threading.Thread]:
    """Serve `/metrics` from a daemon thread; stop it with `server.shutdown()`."""
    return start_http_server(port, addr=address)
