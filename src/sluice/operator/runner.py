"""Running the operator in-process: kopf with our handlers, options and liveness endpoint.

`sluice operator` calls `run()`. The handlers come in by importing `sluice.operator.handlers`
as a module (never by file path, which would put `sluice/operator` first on `sys.path` and
shadow the standard library's `operator`). A start-up step that fails for good (the CRDs not
served within a minute, a port taken) ends the process with kopf's error and exit code 1, so
the pod restarts.
"""

from __future__ import annotations

import logging

import kopf

from sluice.operator import handlers, options


def run(chosen: options.Options) -> None:
    """Run until SIGTERM/SIGINT: cluster-wide, or only in the namespaces named."""
    kopf.configure(
        debug=chosen.log_level == "debug", quiet=chosen.log_level in ("warning", "error")
    )
    if chosen.log_level == "info":
        # kopf logs each event handler's success at INFO: a line per watch event of every
        # policy and child (2,600 for 200 policies), drowning the operator's own lines.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        registry=handlers.registry,
        standalone=True,
        clusterwide=not chosen.namespaces,
        namespaces=list(chosen.namespaces),
        liveness_endpoint=chosen.liveness_endpoint,
        memo=kopf.Memo(options=chosen),
    )
