"""The failing MCP server: the normal one, but tools/list breaks in a chosen way.

Modes (``--mode``, or at run time ``POST /control/mode {"mode": ...}``; ``/control/reset``
restores the command-line mode):

* ``error``: tools/list answers a JSON-RPC error (-32603); everything else works;
* ``http500``: every POST to ``/mcp`` answers HTTP 500 with a plain-text body, as a crashed
  backend behind a load balancer does (still counted by method, as ``/control`` counts);
* ``ok``: no failure, so a test can break a server that has already answered.
"""

from __future__ import annotations

import argparse
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR

from tests.support.mcp import normal
from tests.support.mcp.control import App, Calls, Receive, Scope, Send, read_body

MODES = ("error", "http500", "ok")


def add_options(parser: argparse.ArgumentParser) -> None:
    normal.add_options(parser)
    parser.add_argument("--mode", choices=MODES, default="error")


class Failure:
    """The current failure mode, shared by the middleware and the HTTP wrapper."""

    def __init__(self, mode: str) -> None:
        self.mode = mode


class BrokenList:
    """MCPServer middleware that fails tools/list with -32603 while the mode is ``error``."""

    def __init__(self, failure: Failure) -> None:
        self.failure = failure

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method == "tools/list" and self.failure.mode == "error":
            raise MCPError(code=INTERNAL_ERROR, message="tools/list is broken on purpose")
        return await call_next(ctx)


def http500(app: App, failure: Failure) -> App:
    """Answers every POST to /mcp with HTTP 500 while the mode is ``http500``."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or failure.mode != "http500":
            await app(scope, receive, send)
            return
        await read_body(receive)
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"Internal Server Error"})

    return wrapper


def build(options: argparse.Namespace) -> App:
    calls = Calls()
    failure = Failure(options.mode)
    server = normal.build_server(options, calls, middleware=[BrokenList(failure)])

    async def set_mode(body: Any) -> dict[str, str]:
        if body["mode"] not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        failure.mode = body["mode"]
        return {"mode": failure.mode}

    async def reset() -> None:
        failure.mode = options.mode

    return normal.serve_app(
        server,
        options,
        calls,
        actions={"mode": set_mode},
        on_reset=reset,
        wrap=lambda app: http500(app, failure),
    )
