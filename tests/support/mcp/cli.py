"""``python -m tests.support.mcp KIND --port N [options]``: serve one test MCP server on loopback.

KIND is one of :data:`KINDS`; each kind's module adds its own options (``--help`` after the
kind lists them). uvicorn serves the app; SIGTERM stops it, with open streams cut after a second.
"""

from __future__ import annotations

import argparse
from types import ModuleType

import uvicorn

from tests.support.mcp import changing, failing, fastserver, hostile, normal, slow

KINDS: dict[str, ModuleType] = {
    "normal": normal,
    "slow": slow,
    "failing": failing,
    "changing": changing,
    "hostile": hostile,
    "fast": fastserver,
}

GRACEFUL_SHUTDOWN_SECONDS = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.mcp")
    kinds = parser.add_subparsers(dest="kind", required=True)
    for name, module in KINDS.items():
        sub = kinds.add_parser(name, help=(module.__doc__ or "").splitlines()[0])
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, required=True)
        module.add_options(sub)
    options = parser.parse_args(argv)
    app = KINDS[options.kind].build(options)
    uvicorn.run(
        app,
        host=options.host,
        port=options.port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return 0
