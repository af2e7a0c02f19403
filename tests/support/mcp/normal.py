"""The well-behaved MCP server: a few tools, prompts and resources, built with the SDK's MCPServer.

Every other ``MCPServer``-based test server starts from :func:`build_server` and changes one
thing (a slow tools/list, failures, a changing list). Tools: ``add``, ``echo``, ``math.mul``
(a dotted name, as qualified names must survive those), ``progress`` (reports each step as a
progress notification) and ``sleep`` (for timeouts and cancellation; a cancelled sleep is
counted as ``cancelled/sleep``). Prompt ``greet``; resources ``res://<name>/readme`` and the
template ``res://<name>/items/{item}``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import anyio
from mcp.server.caching import CacheHint
from mcp.server.context import ServerMiddleware
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus

from tests.support.mcp.control import (
    Action,
    App,
    Calls,
    Receive,
    Scope,
    Send,
    send_json,
    with_control,
)
from tests.support.mcp.sessions import SessionAmnesia

LISTS = ("tools/list", "prompts/list", "resources/list", "resources/templates/list")


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options every MCPServer-based test server takes on the command line."""
    parser.add_argument("--name", default="normal")
    parser.add_argument("--stateless", action="store_true", help="no sessions (stateless_http)")
    parser.add_argument("--json-response", action="store_true", help="JSON, never SSE, answers")
    parser.add_argument("--ttl-ms", type=int, default=0, help="ttlMs on list results")
    parser.add_argument(
        "--cache-scope", choices=["public", "private"], default="private", help="their cacheScope"
    )
    parser.add_argument(
        "--handshake-only",
        action="store_true",
        help="refuse 2026-07-28 requests, as a server of the earlier revisions does",
    )


def build_server(
    options: argparse.Namespace,
    calls: Calls,
    middleware: Sequence[ServerMiddleware[Any]] = (),
    bus: InMemorySubscriptionBus | None = None,
) -> MCPServer:
    """An MCPServer with the standard tools, prompts and resources."""
    scope: Literal["public", "private"] = options.cache_scope
    hints = {method: CacheHint(ttl_ms=options.ttl_ms, scope=scope) for method in LISTS}
    server = MCPServer(
        options.name,
        log_level="WARNING",
        cache_hints=hints,
        subscriptions=bus,
        middleware=list(middleware),
    )
    add_tools(server, calls)
    add_prompts_and_resources(server, options.name)
    return server


def add_tools(server: MCPServer, calls: Calls) -> None:
    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool(name="math.mul")
    def mul(a: int, b: int) -> int:
        """Multiply two integers (a tool name with a dot in it)."""
        return a * b

    @server.tool()
    async def progress(steps: int, ctx: Context) -> str:
        """Report `steps` progress notifications, then finish."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
        return f"done after {steps} steps"

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Sleep, so callers can time out or cancel; a cancelled sleep is counted."""
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            calls.record("cancelled/sleep")
            raise
        return f"slept {seconds}"


def add_prompts_and_resources(server: MCPServer, name: str) -> None:
    @server.prompt()
    def greet(who: str) -> str:
        """Greet someone."""
        return f"Hello, {who}!"

    @server.resource(f"res://{name}/readme", mime_type="text/plain")
    def readme() -> str:
        """What this server is."""
        return f"{name}: a test MCP server"

    @server.resource(f"res://{name}/items/{{item}}", mime_type="text/plain")
    def item(item: str) -> str:
        """One item, by name."""
        return f"item {item}"


def serve_app(
    server: MCPServer,
    options: argparse.Namespace,
    calls: Calls,
    actions: Mapping[str, Action] | None = None,
    on_reset: Callable[[], Awaitable[None]] | None = None,
    wrap: Callable[[App], App] | None = None,
) -> App:
    """The ASGI app: MCP at ``/mcp``, sessions that can be forgotten, and ``/control``.

    ``wrap`` puts a server's own ASGI layer around the MCP app, inside ``/control``.
    """
    mcp_app: App = server.streamable_http_app(
        stateless_http=options.stateless, json_response=options.json_response
    )
    inner = wrap(mcp_app) if wrap is not None else mcp_app
    amnesia = SessionAmnesia(handshake_only(inner) if options.handshake_only else inner)

    async def forget_sessions(_: Any) -> dict[str, int]:
        return {"forgotten": amnesia.forget()}

    async def reset() -> None:
        amnesia.reset()
        if on_reset is not None:
            await on_reset()

    all_actions = {"forget-sessions": forget_sessions, **(actions or {})}
    return with_control(amnesia, calls, actions=all_actions, on_reset=reset)


def handshake_only(app: App) -> App:
    """`app` refusing what carries the 2026-07-28 header, as mcp 1.x servers do (400, -32600):
    clients that probe with `server/discover` fall back to the `initialize` handshake."""

    async def refusing(scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", [])) if scope["type"] == "http" else {}
        if headers.get(b"mcp-protocol-version") == b"2026-07-28":
            error = {"code": -32600, "message": "Bad Request: unsupported protocol version"}
            await send_json(send, 400, {"jsonrpc": "2.0", "id": None, "error": error})
            return
        await app(scope, receive, send)

    return refusing


def build(options: argparse.Namespace) -> App:
    calls = Calls()
    return serve_app(build_server(options, calls), options, calls)
