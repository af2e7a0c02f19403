"""The changing MCP server: its tool list grows and shrinks on demand, and it says so.

A change comes from a tool call (``grow`` with ``{"name": ...}``) or from the test over HTTP
(``POST /control/tools {"add": [...], "remove": [...]}``). Each change is announced with
``notifications/tools/list_changed`` to every connected client, in each era's way:

* handshake-era sessions (2025-11-25 and earlier) get it on their GET stream: the SDK's
  MCPServer only notifies the session of the current request, so :class:`SessionRegistry`
  remembers every session seen and this server notifies them all;
* 2026-07-28 clients get it on their ``subscriptions/listen`` streams, via the server's bus.

``/control/reset`` drops the added tools (without announcing it: the next test's clients are
new) and restores the initial list.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ToolsListChanged
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from tests.support.mcp import normal
from tests.support.mcp.control import App, Calls

add_options = normal.add_options


class SessionRegistry:
    """MCPServer middleware that remembers each handshake-era session, by its session id."""

    def __init__(self) -> None:
        self.sessions: dict[str, ServerSession] = {}

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        session_id = ctx.request.headers.get("mcp-session-id") if ctx.request is not None else None
        if session_id and ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
            self.sessions[session_id] = ctx.session
        return await call_next(ctx)

    async def notify_all(self) -> None:
        for session_id, session in list(self.sessions.items()):
            try:
                await session.send_tool_list_changed()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                # A session its client closed (DELETE) or the server expired: stop telling it.
                del self.sessions[session_id]


class ToolSet:
    """The tools added at run time, and the announcing of each change."""

    def __init__(
        self, server: MCPServer, registry: SessionRegistry, bus: InMemorySubscriptionBus
    ) -> None:
        self.server = server
        self.registry = registry
        self.bus = bus
        self.added: list[str] = []

    async def change(self, add: list[str], remove: list[str]) -> list[str]:
        for name in add:
            if name not in self.added:
                self.server.add_tool(
                    make_tool(name), name=name, description=f"added at run time: {name}"
                )
                self.added.append(name)
        for name in remove:
            self.server.remove_tool(name)
            if name in self.added:
                self.added.remove(name)
        await self.bus.publish(ToolsListChanged())
        await self.registry.notify_all()
        return [tool.name for tool in await self.server.list_tools()]

    def reset(self) -> None:
        for name in self.added:
            self.server.remove_tool(name)
        self.added.clear()


def make_tool(name: str) -> Any:
    def tool(text: str = "") -> str:
        return f"{name}: {text}"

    return tool


def build(options: argparse.Namespace) -> App:
    calls = Calls()
    registry = SessionRegistry()
    bus = InMemorySubscriptionBus()
    server = normal.build_server(options, calls, middleware=[registry], bus=bus)
    tools = ToolSet(server, registry, bus)

    @server.tool()
    async def grow(name: str) -> list[str]:
        """Add a tool named `name` and announce the change; returns the tool names."""
        return await tools.change([name], [])

    async def change(body: Any) -> dict[str, list[str]]:
        return {"tools": await tools.change(body.get("add", []), body.get("remove", []))}

    async def reset() -> None:
        tools.reset()

    return normal.serve_app(server, options, calls, actions={"tools": change}, on_reset=reset)
