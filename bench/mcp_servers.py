"""Simulated MCP servers for bench.mcp, all in this one process, written with the official SDK.

    python -m bench.mcp_servers PORT:DELAY_MS[:SETS] [PORT:DELAY_MS[:SETS] ...]

Each argument is one `MCPServer` (three tools, or SETS copies of them) served over Streamable
HTTP at `http://127.0.0.1:PORT/mcp`, both protocol eras (the SDK's default app), answering
`tools/list` only after DELAY_MS (0 for none): a real server's list is often built from a slow
backend, and that delay is what a gateway's cache is there to hide. Nothing else is delayed, so
handshakes and discovery cost what the SDK makes them cost.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import orjson
import uvicorn
from mcp.server.mcpserver import MCPServer

ASGIApp = Any


def server(name: str, sets: int = 1) -> MCPServer:
    """A server of three tools; with `sets` > 1, that many copies named `s<k>.<tool>`, the
    names and shapes of the list Sluice merges from `sets` servers."""
    mcp = MCPServer(name)
    for k in range(sets):
        prefix = f"s{k}." if sets > 1 else ""
        add_tools(mcp, prefix, name)
    return mcp


def add_tools(mcp: MCPServer, prefix: str, name: str) -> None:
    @mcp.tool(name=prefix + "add")
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @mcp.tool(name=prefix + "echo")
    def echo(text: str) -> str:
        """Say the text back."""
        return text

    @mcp.tool(name=prefix + "whoami")
    def whoami() -> str:
        """This server's name."""
        return name


def delaying_lists(app: ASGIApp, seconds: float) -> ASGIApp:
    """`app`, with every POST whose JSON-RPC method is tools/list held for `seconds` first.

    The body is read here to see the method (the session-based eras send no `Mcp-Method`
    header), then replayed to `app` unchanged."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not seconds:
            await app(scope, receive, send)
            return
        messages = [await receive()]
        while messages[-1].get("more_body", False):
            messages.append(await receive())
        if is_tools_list(b"".join(m.get("body", b"") for m in messages)):
            await asyncio.sleep(seconds)

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await app(scope, replay, send)

    return wrapped


def is_tools_list(body: bytes) -> bool:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(message, dict) and message.get("method") == "tools/list"


async def serve(specs: list[tuple[int, float, int]]) -> None:
    servers = []
    for i, (port, delay_ms, sets) in enumerate(specs):
        app = delaying_lists(server(f"s{i}", sets).streamable_http_app(), delay_ms / 1000)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        servers.append(uvicorn.Server(config))
    await asyncio.gather(*(s.serve() for s in servers))


def main() -> None:
    # The SDK logs every session at INFO; quiet, so the stderr pipe bench.common keeps never
    # fills and blocks the servers.
    logging.getLogger("mcp").setLevel(logging.WARNING)
    specs = []
    for arg in sys.argv[1:]:
        port, delay, sets = [*arg.split(":"), "1"][:3]
        specs.append((int(port), float(delay), int(sets)))
    asyncio.run(serve(specs))


if __name__ == "__main__":
    main()
