"""The side channel of every test MCP server: call counts and test-only controls under ``/control``.

Tests ask a server, not the client, how many requests of each method reached it (``GET
/control/calls``), so an assertion such as "the proxy sent one tools/list" counts what really
arrived. :func:`with_control` puts the ``/control`` routes in front of any ASGI app (an
``MCPServer``'s, fastmcp's, or raw ASGI) and records the JSON-RPC method of every message
POSTed to it in a :class:`Calls` (other requests as ``http:GET``, ``http:DELETE``) before
forwarding the request unchanged.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
Action = Callable[[Any], Awaitable[Any]]
"""A control action: takes the decoded JSON body (or None) and returns a JSON-able answer."""


class Calls:
    """How many requests (and notifications) of each JSON-RPC method reached the server."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()

    def record(self, method: str) -> None:
        self._counts[method] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)

    def reset(self) -> None:
        self._counts.clear()

    def __repr__(self) -> str:
        return f"<Calls {dict(self._counts)}>"


def with_control(
    app: App,
    calls: Calls,
    actions: Mapping[str, Action] | None = None,
    on_reset: Callable[[], Awaitable[None]] | None = None,
) -> App:
    """Serve ``GET /control/calls``, ``POST /control/reset`` and ``POST /control/<action>``.

    Everything else, lifespan included, goes to ``app``. ``on_reset`` lets a server restore its
    own state (a changed tool list, forgotten sessions) when a test starts.
    """
    routes = dict(actions or {})

    async def control(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if not scope["path"].startswith("/control/"):
            await count_and_forward(scope, receive, send)
            return
        name = scope["path"].removeprefix("/control/")
        body = await read_body(receive)
        if name == "calls":
            await send_json(send, 200, calls.snapshot())
        elif name == "reset":
            calls.reset()
            if on_reset is not None:
                await on_reset()
            await send_json(send, 200, {})
        elif name in routes and scope["method"] == "POST":
            await send_json(send, 200, await routes[name](json.loads(body) if body else None))
        else:
            await send_json(send, 404, {"error": f"no control {name!r}"})

    async def count_and_forward(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            calls.record(f"http:{scope['method']}")  # the GET stream, DELETE at close
            await app(scope, receive, send)
            return
        body = await read_body(receive)
        for method in methods_of(body):
            calls.record(method)
        replayed = False

        async def replay() -> Message:
            # The body once, as read; after that the real channel, so disconnects still arrive.
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return control


def methods_of(body: bytes) -> list[str]:
    """The methods of a POSTed JSON-RPC message or batch ("?" for what is not one)."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return ["?"]
    messages = decoded if isinstance(decoded, list) else [decoded]
    return [m.get("method", "?") if isinstance(m, dict) else "?" for m in messages]


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload).encode()
    start_headers = [(b"content-type", b"application/json"), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})
