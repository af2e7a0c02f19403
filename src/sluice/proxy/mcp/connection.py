"""The gateway's connection to one upstream MCP server, over Streamable HTTP, in either era.

Negotiated once, as the SDK's `mode="auto"` does: `server/discover` at the stateless 2026-07-28
revision; a server that does not answer it as a modern one gets the `initialize` handshake of
2025-11-25 and a session (`Mcp-Session-Id`), re-established when the server forgets it (404).
Written by hand over the proxy's aiohttp sessions (`upstream.sessions`) rather than with the
SDK's client: the SDK client is one anyio task group and one httpx client per connection, and
the gateway needs many requests in flight on one connection, each with its own caller's
headers, bounded in time and bytes.

* `request(method, params)` answers the result, or raises `jsonrpc.RPCError` (the server's own
  error, passed to the caller as it is) or `UnavailableError` (no usable answer: unreachable, slow,
  not JSON-RPC, over `maxResponseBytes`). Answers may be JSON or an SSE stream; progress
  notifications on that stream go to the caller's `on_progress`.
* A listener keeps a stream open (`subscriptions/listen` for modern servers, `GET` for sessions)
  and hands every notification to `on_notification`, reconnecting with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib import metadata
from typing import Any, Protocol

import aiohttp
import orjson

from sluice.proxy import metrics, tasks
from sluice.proxy.http import errors, tracing
from sluice.proxy.mcp import clients, jsonrpc
from sluice.proxy.upstream import sessions

log = logging.getLogger(__name__)

MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", HANDSHAKE)
CLIENT_INFO = {"name": "sluice", "version": metadata.version("sluice-operator")}
LIST_CHANGED = {field: True for field in clients.LIST_FILTERS.values()}
"""Every list change, asked for on a 2026-07-28 server's `subscriptions/listen`."""
RECONNECT_SECONDS = (0.5, 30.0)
"""Backoff of the notification listener: first wait, ceiling."""

Progress = Callable[[dict[str, Any]], Awaitable[None]]
Notify = Callable[[str, str, dict[str, Any]], None]
"""(server, method, params) of a notification the server sent."""


class UnavailableError(Exception):
    """The server gave no usable answer (unreachable, too slow, garbled, too large)."""


class Connection(Protocol):
    """What the gateway needs of an upstream server (`HTTPConnection`, or a test's fake)."""

    name: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def request(
        self,
        method: str,
        params: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        on_progress: Progress | None = None,
    ) -> dict[str, Any]: ...


class HTTPConnection:
    """One upstream server over Streamable HTTP."""

    def __init__(
        self,
        name: str,
        url: str,
        headers: Mapping[str, str],
        timeout: float,
        max_bytes: int,
        pool: sessions.SessionPool,
        on_notification: Notify,
    ) -> None:
        self.name = name
        self.url = url
        self.headers = dict(headers)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.pool = pool
        self.on_notification = on_notification
        self.era: str | None = None
        """`MODERN` or `HANDSHAKE` once negotiated."""
        self.session_id: str | None = None
        self.protocol_version = HANDSHAKE
        """The session-based revision the server agreed to in `initialize`."""
        self._ready = False
        self._ids = itertools.count(1)
        self._negotiating = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._up = metrics.mcp_upstream_up.labels(name)

    async def start(self) -> None:
        """Start listening for the server's notifications; negotiation happens on first use."""
        loop = asyncio.get_running_loop()
        self._listener = loop.create_task(self._listen_forever(), name=f"sluice-mcp-{self.name}")

    async def close(self) -> None:
        await tasks.cancel(self._listener)
        self._listener = None
        if self.session_id is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, UnavailableError):
                async with asyncio.timeout(2):
                    await self._delete_session()
            self.session_id = None

    # --- requests -----------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        on_progress: Progress | None = None,
    ) -> dict[str, Any]:
        await self._negotiate()
        try:
            result = await self._request(method, params, headers, on_progress)
        except SessionGoneError as gone:
            await self._negotiate(gone.session_id)
            try:
                result = await self._request(method, params, headers, on_progress)
            except SessionGoneError:
                self._failed()
                raise UnavailableError(f"{self.name} forgot its new session at once") from None
        self._up.set(1)
        return result

    async def _request(
        self,
        method: str,
        params: dict[str, Any],
        headers: Mapping[str, str] | None,
        on_progress: Progress | None,
    ) -> dict[str, Any]:
        id_ = next(self._ids)
        params = dict(params)
        meta = dict(params.get("_meta") or {})
        if on_progress is not None:
            meta["progressToken"] = f"sluice-{id_}"
        if self.era == MODERN:
            meta.update(self._modern_meta())
        if meta:
            params["_meta"] = meta
        body = {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}
        try:
            async with asyncio.timeout(self.timeout):
                return await self._post(body, headers, on_progress)
        except TimeoutError:
            self._failed()
            raise UnavailableError(f"no answer within {self.timeout:g}s") from None
        except (aiohttp.ClientError, OSError, ValueError) as e:
            # ValueError: aiohttp refusing a header value (a name with a control character).
            self._failed()
            raise UnavailableError(errors.describe(e)) from None

    async def _post(
        self,
        body: dict[str, Any],
        headers: Mapping[str, str] | None,
        on_progress: Progress | None,
    ) -> dict[str, Any]:
        outgoing = self._headers(body["method"], body.get("params", {}), headers)
        sent_session = self.session_id
        session = self.pool.next()
        async with session.post(
            self.url, data=orjson.dumps(body), headers=outgoing, allow_redirects=False
        ) as reply:
            if reply.status == 404 and sent_session is not None:
                raise SessionGoneError(sent_session)
            if reply.status >= 300:  # redirects are not followed: they could lead anywhere
                self._failed()
                raise UnavailableError(f"HTTP {reply.status} from {self.name}")
            if reply.content_type == "text/event-stream":
                async for message in self._events(reply):
                    if message.get("id") == body["id"] and "method" not in message:
                        return answer_of(message)
                    await self._side_message(message, on_progress)
                raise UnavailableError(f"{self.name} closed its stream without an answer")
            return answer_of(await self._json(reply))

    async def _side_message(self, message: dict[str, Any], on_progress: Progress | None) -> None:
        """A message on a request's stream that is not its answer: progress goes to the
        caller, other notifications to the gateway; requests from the server are not served."""
        method = message.get("method")
        params = params_of(message)
        if method == "notifications/progress":
            if on_progress is not None:
                await on_progress(params)
        elif isinstance(method, str) and "id" not in message:
            self._notified(method, params)

    # --- negotiation --------------------------------------------------------------------------

    async def _negotiate(self, gone: str | None = None) -> None:
        """Negotiate once; with `gone` (a session the server forgot), again if that session is
        still the current one. Concurrent callers wait for one negotiation; only a finished one
        is used, and a failed one leaves nothing behind."""
        if self._ready and (gone is None or gone != self.session_id):
            return
        async with self._negotiating:
            if self._ready and (gone is None or gone != self.session_id):
                return
            if self._ready and self.session_id is not None:
                metrics.mcp_sessions.labels("upstream").dec()
            self._ready = False
            self.era = self.session_id = None
            try:
                async with asyncio.timeout(self.timeout):
                    await self._handshake()
            except BaseException as e:
                self.era = self.session_id = None
                if isinstance(e, TimeoutError):
                    self._failed()
                    raise UnavailableError(f"no answer within {self.timeout:g}s") from None
                if isinstance(e, aiohttp.ClientError | OSError):
                    self._failed()
                    raise UnavailableError(errors.describe(e)) from None
                raise
            self._ready = True

    async def _handshake(self) -> None:
        self.era = MODERN
        try:
            discovered = await self._post(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "server/discover",
                    "params": {"_meta": self._modern_meta()},
                },
                None,
                None,
            )
        except (jsonrpc.RPCError, UnavailableError):
            discovered = {}
        if MODERN in (discovered.get("supportedVersions") or ()):
            return
        self.era = HANDSHAKE
        params = {"protocolVersion": HANDSHAKE, "capabilities": {}, "clientInfo": CLIENT_INFO}
        session = self.pool.next()
        body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
        headers = self._headers("initialize", params, None)
        async with session.post(
            self.url, data=orjson.dumps(body), headers=headers, allow_redirects=False
        ) as reply:
            if reply.status >= 300:
                raise UnavailableError(f"HTTP {reply.status} from {self.name} to initialize")
            self.session_id = reply.headers.get("mcp-session-id")
            if reply.content_type == "text/event-stream":
                answer: dict[str, Any] = {}
                async for message in self._events(reply):
                    if message.get("id") == 0:
                        answer = answer_of(message)
                        break
            else:
                answer = answer_of(await self._json(reply))
        agreed = answer.get("protocolVersion")
        self.protocol_version = agreed if agreed in HANDSHAKE_VERSIONS else HANDSHAKE
        if self.session_id is not None:
            metrics.mcp_sessions.labels("upstream").inc()
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        headers = self._headers("notifications/initialized", {}, None)
        async with session.post(
            self.url, data=orjson.dumps(note), headers=headers, allow_redirects=False
        ):
            pass

    def _modern_meta(self) -> dict[str, Any]:
        return {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
            "io.modelcontextprotocol/clientCapabilities": {},
        }

    def _headers(
        self, method: str, params: Mapping[str, Any], extra: Mapping[str, str] | None
    ) -> dict[str, str]:
        headers = {
            **self.headers,
            # The request id and trace context of the caller's request this call serves, if any.
            **tracing.current.get(),
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        }
        if self.era == MODERN:
            headers["mcp-protocol-version"] = MODERN
            headers["mcp-method"] = method
            field = jsonrpc.NAMED_METHODS.get(method)
            name = params.get(field) if field is not None else None
            if isinstance(name, str):
                headers["mcp-name"] = name
        elif self.era == HANDSHAKE and method != "initialize":
            headers["mcp-protocol-version"] = self.protocol_version
            if self.session_id is not None:
                headers["mcp-session-id"] = self.session_id
        if extra:
            headers.update(extra)
        return headers

    async def _delete_session(self) -> None:
        headers = self._headers("", {}, None)
        async with self.pool.next().delete(self.url, headers=headers, allow_redirects=False):
            metrics.mcp_sessions.labels("upstream").dec()

    # --- reading answers ----------------------------------------------------------------------

    async def _json(self, reply: aiohttp.ClientResponse) -> dict[str, Any]:
        data = await self._bounded(reply)
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            self._failed()
            raise UnavailableError(f"{self.name} answered with no JSON: {e}") from None
        if not isinstance(message, dict):
            raise UnavailableError(f"{self.name} answered with no JSON-RPC object")
        return message

    async def _bounded(self, reply: aiohttp.ClientResponse) -> bytes:
        chunks, size = [], 0
        async for chunk in reply.content.iter_any():
            size += len(chunk)
            if size > self.max_bytes:
                self._failed()
                raise UnavailableError(f"{self.name}'s answer exceeds {self.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _events(self, reply: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
        """The JSON-RPC messages of an SSE stream, each bounded by `max_bytes`."""
        data: list[bytes] = []
        size = 0
        # The unfinished line as pieces, joined once it ends: a hostile server's endless line
        # sent in small chunks costs a list append each, not a copy of all it sent so far.
        partial: list[bytes] = []
        partial_size = 0
        async for chunk in reply.content.iter_any():
            if b"\n" not in chunk:
                partial.append(chunk)
                partial_size += len(chunk)
                if partial_size > self.max_bytes:
                    raise UnavailableError(
                        f"{self.name} sent an event line over {self.max_bytes} bytes"
                    )
                continue
            text = b"".join([*partial, chunk]) if partial else chunk
            *lines, rest = text.split(b"\n")
            partial, partial_size = ([rest], len(rest)) if rest else ([], 0)
            for raw in lines:
                line = raw.rstrip(b"\r")
                if line.startswith(b"data:"):
                    piece = line[5:].lstrip(b" ")
                    size += len(piece)
                    if size > self.max_bytes:
                        raise UnavailableError(
                            f"{self.name} sent an event over {self.max_bytes} bytes"
                        )
                    data.append(piece)
                elif not line and data:
                    joined, data, size = b"\n".join(data), [], 0
                    with contextlib.suppress(orjson.JSONDecodeError):
                        message = orjson.loads(joined)
                        if isinstance(message, dict):
                            yield message

    # --- notifications ------------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        wait = RECONNECT_SECONDS[0]
        gone: str | None = None
        while True:
            try:
                await self._negotiate(gone)
                gone = None
                await self._listen()
                wait = RECONNECT_SECONDS[0]
            except SessionGoneError as e:
                gone = e.session_id
            except (UnavailableError, jsonrpc.RPCError, aiohttp.ClientError, OSError) as e:
                log.debug("notifications of %s: %s; listening again in %.1fs", self.name, e, wait)
            await asyncio.sleep(wait * (0.5 + random.random()))
            wait = min(wait * 2, RECONNECT_SECONDS[1])

    async def _listen(self) -> None:
        """One notification stream, until the server ends it."""
        session = self.pool.next()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=None)
        if self.era == MODERN:
            params = {"notifications": LIST_CHANGED, "_meta": self._modern_meta()}
            body = {
                "jsonrpc": "2.0",
                "id": "sluice-listen",
                "method": "subscriptions/listen",
                "params": params,
            }
            headers = self._headers("subscriptions/listen", params, None)
            request = session.post(
                self.url,
                data=orjson.dumps(body),
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            )
        elif self.session_id is not None:
            headers = self._headers("", {}, None)
            headers["accept"] = "text/event-stream"
            request = session.get(self.url, headers=headers, timeout=timeout, allow_redirects=False)
        else:
            # A server without sessions has no stream to offer (the SDK's stateless servers
            # accept a GET that never carries anything): only list TTLs keep its lists fresh.
            await asyncio.sleep(RECONNECT_SECONDS[1])
            return
        sent_session = self.session_id
        async with request as reply:
            if reply.status == 404 and sent_session is not None:
                raise SessionGoneError(sent_session)
            if reply.status >= 300 or reply.content_type != "text/event-stream":
                # 405: the server offers no stream; only list TTLs keep its lists fresh.
                await asyncio.sleep(RECONNECT_SECONDS[1])
                return
            async for message in self._events(reply):
                method = message.get("method")
                params = params_of(message)
                if isinstance(method, str) and "id" not in message:
                    self._notified(method, params)

    def _notified(self, method: str, params: dict[str, Any]) -> None:
        if method == "notifications/subscriptions/acknowledged":
            return
        metrics.mcp_notifications.labels(self.name, metric_method(method)).inc()
        self.on_notification(self.name, method, params)

    def _failed(self) -> None:
        self._up.set(0)

    def __repr__(self) -> str:
        return f"<HTTPConnection {self.name} {self.url} era={self.era} session={self.session_id}>"


class SessionGoneError(Exception):
    """The server answered 404 to our session: it forgot it; initialise again."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id


def answer_of(message: dict[str, Any]) -> dict[str, Any]:
    """The result of a JSON-RPC response, or its error raised as `RPCError`."""
    if "error" in message:
        error = message["error"] if isinstance(message["error"], dict) else {}
        code, text = error.get("code"), error.get("message")
        raise jsonrpc.RPCError(
            code if type(code) is int else jsonrpc.INTERNAL_ERROR,
            text if isinstance(text, str) else "error",
            error.get("data"),
        )
    result = message.get("result")
    if not isinstance(result, dict):
        raise UnavailableError("a JSON-RPC response without a result object")
    return result


def params_of(message: dict[str, Any]) -> dict[str, Any]:
    params = message.get("params")
    return params if isinstance(params, dict) else {}


KNOWN_NOTIFICATIONS = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
        "notifications/resources/updated",
        "notifications/message",
        "notifications/progress",
        "notifications/cancelled",
    }
)


def metric_method(method: str) -> str:
    """A notification's method as a label value: known ones as they are, the rest `other`."""
    return method if method in KNOWN_NOTIFICATIONS else "other"
