"""The thin HTTP layer: an ASGI request read into a `Request`, a `Reply` written back.

No framework: the hot routes are a dict lookup and two `send` calls (DESIGN.md §4 measured a plain
ASGI callable on uvicorn at about twice the rate of the alternatives).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import orjson

from sluice.proxy.http import errors

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
T = TypeVar("T")

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
CLIENT_CLOSED = 499
"""The status counted for a request whose caller hung up before its answer (nginx's)."""


@dataclasses.dataclass(slots=True)
class Request:
    """One caller's request, its body read whole (API bodies are small and must be parsed)."""

    method: str
    path: str
    query: bytes
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header, by its lower-case name."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, or a 400 `ProxyError`.

        orjson refuses numbers beyond a double's range (`1e400`), which are valid JSON: such a
        body is read by Python's parser instead, so the upstream answers it, not the proxy (the
        caches and batchers leave it alone: `llm.cachekeys.faithful`)."""
        try:
            payload = orjson.loads(self.body)
        except orjson.JSONDecodeError as e:
            payload = _strict_json(self.body, e)
        if not isinstance(payload, dict):
            raise errors.not_an_object()
        return payload


def _strict_json(body: bytes, refused: orjson.JSONDecodeError) -> Any:
    """`body` read by Python's parser, without the non-JSON constants (`NaN`) it would allow;
    a 400 naming orjson's complaint when it is not JSON either."""

    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(body, parse_constant=no_constants)
    except (ValueError, RecursionError):
        raise errors.bad_json(str(refused)) from None


@dataclasses.dataclass(slots=True)
class Reply:
    """A response: either a whole `body`, or a `stream` of chunks sent as they come."""

    status: int
    headers: Headers
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


def json_reply(status: int, payload: Any, headers: Headers | None = None) -> Reply:
    return Reply(status, [*JSON_HEADERS, *(headers or [])], orjson.dumps(payload))


def error_reply(error: errors.ProxyError) -> Reply:
    extra = [(k.encode(), v.encode()) for k, v in error.headers.items()]
    return Reply(error.status, [*JSON_HEADERS, *extra], error.body())


async def read_request(scope: Scope, receive: Receive, limit: int) -> Request:
    """Read the whole body, refusing (413) more than `limit` bytes before buffering them."""
    headers: Headers = scope["headers"]
    for key, value in headers:
        if key == b"content-length" and value.isdigit() and int(value) > limit:
            raise errors.body_too_large(limit)
    # uvicorn hands over a body that arrived whole as one message: read that without a loop.
    message = await receive()
    if message["type"] == "http.disconnect":
        raise errors.client_gone()
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise errors.body_too_large(limit)
    if message.get("more_body", False):
        body = await read_rest(receive, body, limit)
    return Request(scope["method"], scope["path"], scope["query_string"], headers, body)


async def read_rest(receive: Receive, first: bytes, limit: int) -> bytes:
    """The rest of a body sent in several messages, joined to its `first` chunk."""
    chunks = [first]
    size = len(first)
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise errors.client_gone()  # never act on part of a body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.body_too_large(limit)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def send_reply(
    send: Send, reply: Reply, receive: Receive | None = None, *, chunked: bool = True
) -> None:
    """Write a reply; a stream is forwarded chunk by chunk and always closed.

    Given `receive`, a stream also ends when the caller hangs up: ASGI tells of it only through
    `receive()`, and a stream that nobody stops would go on reading its upstream (and billing
    for it) into a closed connection (FACTS.md). Without `chunked` (an HTTP/1.0 caller, which
    knows no chunked encoding, and uvicorn would use it for a body of unknown length) a stream
    is read whole and sent with its length.
    """
    if reply.stream is not None and not chunked:
        whole = await (
            until_hangup(collect(reply.stream), receive) if receive else collect(reply.stream)
        )
        if whole is None:
            return
        reply = Reply(reply.status, reply.headers, whole)
    if reply.stream is None:
        headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})
        return
    if receive is None:
        await send_stream(send, reply)
    else:
        await until_hangup(send_stream(send, reply), receive)  # closing it stops its source


async def send_stream(send: Send, reply: Reply) -> None:
    assert reply.stream is not None
    try:
        # Inside the `try`: a stream must be closed even when its first byte is never sent
        # (it holds an upstream connection, and the response cache waits for its end).
        start = {"type": "http.response.start", "status": reply.status, "headers": reply.headers}
        await send(start)
        async for chunk in reply.stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        await aclose(reply.stream)
    await send({"type": "http.response.body", "body": b""})


async def until_hangup(work: Awaitable[T], receive: Receive) -> T | None:
    """`work`'s result; None when the caller hung up first, and `work` was cancelled (and with
    it whatever upstream request or stream it was waiting on).

    `work` runs in the calling task; a `_Watch` cancels that task on a hang-up. It is started
    only if `work` is still going after one turn of the loop: `asyncio.wait` over two tasks
    cost ~40 µs a call, more than a whole cache hit, and a memory hit never yields at all.
    """
    current = asyncio.current_task()
    assert current is not None
    watch = _Watch(receive, current)
    try:
        return await work
    except asyncio.CancelledError:
        if not watch.heard:
            raise  # cancelled by someone else (the shutdown's cut)
        current.uncancel()
        return None
    finally:
        watch.stop()


class _Watch:
    """Cancels `task` when the caller hangs up, from the loop's next turn on."""

    __slots__ = ("_handle", "_receive", "_task", "_watcher")

    def __init__(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        self._receive = receive
        self._task = task
        self._watcher: asyncio.Task[None] | None = None
        self._handle: asyncio.Handle | None = asyncio.get_running_loop().call_soon(self._start)

    @property
    def heard(self) -> bool:
        """Did the caller hang up (and was the task cancelled for it)?"""
        watcher = self._watcher
        return watcher is not None and watcher.done() and not watcher.cancelled()

    def _start(self) -> None:
        self._handle = None
        self._watcher = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        await disconnected(self._receive)
        self._task.cancel()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


async def disconnected(receive: Receive) -> None:
    """Return when the caller has hung up (the request body was read before)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    """A stream's chunks joined, the stream closed whatever happens."""
    try:
        return b"".join([chunk async for chunk in stream])
    finally:
        await aclose(stream)


async def aclose(stream: AsyncIterator[bytes]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
