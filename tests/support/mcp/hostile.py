"""The hostile MCP server: raw ASGI that answers the handshake politely, then misbehaves.

It speaks just enough of both revisions (``initialize`` with a session id, or
``server/discover`` when the request names 2026-07-28) for a client to get to tools/list, and
the URL path picks how tools/list goes wrong:

* ``/many/mcp``: 50,000 tools in one page;
* ``/huge/mcp``: a 20 MB JSON answer (a few hundred tools with long descriptions);
* ``/huge-sse/mcp``: the same 20 MB as one SSE event;
* ``/endless/mcp``: an SSE answer that never ends (keep-alive comments, never a result);
  tools/call there does the same;
* ``/pages/mcp``: every page has a ``nextCursor``, forever.

GET on any path is an SSE stream that never ends. Every method is counted (``/control/calls``).
A client must bound all of this: error cleanly, never hang, never grow without limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from tests.support.mcp.control import (
    App,
    Calls,
    Receive,
    Scope,
    Send,
    read_body,
    send_json,
    with_control,
)

MANY_TOOLS = 50_000
HUGE_BYTES = 20 * 1024 * 1024
KEEPALIVE_SECONDS = 0.05
MODERN = "2026-07-28"
SESSION_ID = b"hostile-session"


def add_options(parser: argparse.ArgumentParser) -> None:
    """No options: the path picks the behaviour."""


def tool(name: str, description: str = "") -> dict[str, Any]:
    return {"name": name, "description": description, "inputSchema": {"type": "object"}}


class Hostile:
    """The ASGI app; builds the big answers once, as they are the same every time."""

    def __init__(self) -> None:
        self._many: bytes | None = None
        self._huge: bytes | None = None

    def many(self) -> bytes:
        if self._many is None:
            self._many = json.dumps([tool(f"tool_{i}") for i in range(MANY_TOOLS)]).encode()
        return self._many

    def huge(self) -> bytes:
        if self._huge is None:
            description = "x" * (100 * 1024)
            count = HUGE_BYTES // len(description) + 1
            self._huge = json.dumps([tool(f"big_{i}", description) for i in range(count)]).encode()
        return self._huge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        mode = scope["path"].strip("/").removesuffix("/mcp")
        if scope["method"] == "GET":
            await endless_sse(receive, send)
        elif scope["method"] == "DELETE":
            await send_json(send, 200, {})
        else:
            headers = {key.decode(): value.decode() for key, value in scope["headers"]}
            await self.post(mode, headers, await read_body(receive), receive, send)

    async def post(
        self, mode: str, headers: dict[str, str], body: bytes, receive: Receive, send: Send
    ) -> None:
        message = json.loads(body)
        method = message.get("method", "?")
        if "id" not in message:
            await send({"type": "http.response.start", "status": 202, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        modern = headers.get("mcp-protocol-version") == MODERN
        reply = {"jsonrpc": "2.0", "id": message["id"]}
        if method == "initialize":
            result = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "hostile", "version": "1"},
            }
            await send_json(
                send, 200, {**reply, "result": result}, [(b"mcp-session-id", SESSION_ID)]
            )
        elif method == "server/discover" and modern:
            result = {
                "supportedVersions": [MODERN],
                "capabilities": {"tools": {"listChanged": False}},
                "resultType": "complete",
                "ttlMs": 0,
                "cacheScope": "public",
            }
            await send_json(send, 200, {**reply, "result": result})
        elif method == "tools/list":
            await self.tools_list(mode, reply, message, receive, send)
        elif method == "tools/call" and mode == "endless":
            await endless_sse(receive, send)
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": "ok"}], "isError": False}
            await send_json(send, 200, {**reply, "result": result})
        else:
            error = {"code": -32601, "message": "Method not found"}
            await send_json(send, 404 if modern else 200, {**reply, "error": error})

    async def tools_list(
        self,
        mode: str,
        reply: dict[str, Any],
        message: dict[str, Any],
        receive: Receive,
        send: Send,
    ) -> None:
        envelope = json.dumps(reply).encode()[:-1]  # the reply object, still open for "result"
        extra = b',"resultType":"complete","ttlMs":0,"cacheScope":"public"'
        if mode == "many":
            await send_bytes(send, envelope + b',"result":{"tools":' + self.many() + extra + b"}}")
        elif mode == "huge":
            await send_bytes(send, envelope + b',"result":{"tools":' + self.huge() + extra + b"}}")
        elif mode == "huge-sse":
            data = envelope + b',"result":{"tools":' + self.huge() + extra + b"}}"
            await send_sse_start(send)
            await send(
                {
                    "type": "http.response.body",
                    "body": b"event: message\r\ndata: " + data + b"\r\n\r\n",
                }
            )
        elif mode == "endless":
            await endless_sse(receive, send)
        else:
            cursor = int((message.get("params") or {}).get("cursor") or 0)
            page = {"tools": [tool(f"page_{cursor}")], "nextCursor": str(cursor + 1)}
            result = {**page, "resultType": "complete", "ttlMs": 0, "cacheScope": "public"}
            await send_json(send, 200, {**reply, "result": result})


async def send_bytes(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_sse_start(send: Send) -> None:
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def endless_sse(receive: Receive, send: Send) -> None:
    """Keep-alive comments until the client goes away; never a JSON-RPC message."""
    await send_sse_start(send)
    disconnected = asyncio.ensure_future(wait_disconnect(receive))
    try:
        while not disconnected.done():
            await send(
                {"type": "http.response.body", "body": b": keep-alive\r\n\r\n", "more_body": True}
            )
            await asyncio.wait([disconnected], timeout=KEEPALIVE_SECONDS)
    finally:
        disconnected.cancel()


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def build(options: argparse.Namespace) -> App:
    return with_control(Hostile(), Calls())
