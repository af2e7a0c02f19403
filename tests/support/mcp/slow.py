"""The slow MCP server: the normal one, with every tools/list held back for a while.

For "a cold tools/list costs the slowest server, not the sum" and for client timeouts. The
delay is ``--list-delay`` seconds and can be changed at run time: ``POST /control/delay``
``{"seconds": 0.5}``; ``/control/reset`` restores the command-line value.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext

from tests.support.mcp import normal
from tests.support.mcp.control import App, Calls


def add_options(parser: argparse.ArgumentParser) -> None:
    normal.add_options(parser)
    parser.add_argument("--list-delay", type=float, default=1.0, help="seconds per tools/list")


class ListDelay:
    """MCPServer middleware that sleeps before answering tools/list."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method == "tools/list":
            await anyio.sleep(self.seconds)
        return await call_next(ctx)


def build(options: argparse.Namespace) -> App:
    calls = Calls()
    delay = ListDelay(options.list_delay)
    server = normal.build_server(options, calls, middleware=[delay])

    async def set_delay(body: Any) -> dict[str, float]:
        delay.seconds = float(body["seconds"])
        return {"seconds": delay.seconds}

    async def reset() -> None:
        delay.seconds = options.list_delay

    return normal.serve_app(server, options, calls, actions={"delay": set_delay}, on_reset=reset)
