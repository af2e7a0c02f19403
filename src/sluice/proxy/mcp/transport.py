"""`/mcp` over Streamable HTTP, to callers: POST for messages, GET for a session's notification
stream, DELETE to end a session; both eras of the protocol on one endpoint.

Which era a POST speaks is read from the request itself:

    initialize             -> the handshake: a new session, `Mcp-Session-Id` in the answer
    Mcp-Session-Id header  -> that session (404 when unknown: the caller initialises again)
    2026-07-28 in `_meta`  -> stateless (so is `server/discover`): no session; `Mcp-Method` (and
                              `Mcp-Name` where the method has one) must agree with the body
    anything else          -> 400: a session-based request without a session

Answers are JSON, except for streams: `subscriptions/listen` (2026-07-28) and `GET` (sessions)
carry notifications as SSE until the caller leaves, and a `tools/call` (or `prompts/get`,
`resources/read`) whose caller asked for progress carries its progress notifications, then its
answer. A caller that hangs up ends its stream, which cancels the upstream request it waited on.
Every `Origin` a browser sends must be in `allowedOrigins` (the transport's DNS-rebinding rule).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sluice.api import MCPConfig
from sluice.proxy.http.asgi import Headers, Reply, Request
from sluice.proxy.mcp import clients, gateway, jsonrpc, lists

PATH = "/mcp"
JSON = (b"content-type", b"application/json")
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
STREAMABLE = frozenset(jsonrpc.NAMED_METHODS)
PROGRESS_QUEUE = 64
"""Progress notifications held for a caller that reads slowly; older ones make way."""
CLIENT_ERRORS = frozenset(
    {
        jsonrpc.PARSE_ERROR,
        jsonrpc.INVALID_REQUEST,
        jsonrpc.INVALID_PARAMS,
        jsonrpc.HEADER_MISMATCH,
        jsonrpc.UNSUPPORTED_PROTOCOL_VERSION,
    }
)
"""Errors the 2026-07-28 revision answers with HTTP 400 (and -32601 with 404), as the SDK does."""


class MCPRoutes:
    """The handlers of `/mcp`, one per HTTP method."""

    def __init__(self, config: MCPConfig, gate: gateway.Gateway) -> None:
        self.config = config
        self.gateway = gate
        self.origins = frozenset(o.rstrip("/").encode() for o in config.allowed_origins)
        self.inflight: dict[tuple[str, jsonrpc.RequestId], asyncio.Task[Any]] = {}

    # --- POST ---------------------------------------------------------------------------------

    async def post(self, request: Request) -> Reply:
        refused = self.refused(request)
        if refused is not None:
            return refused
        if len(request.body) > self.config.limits.max_request_bytes:
            limit = self.config.limits.max_request_bytes
            return failure(413, jsonrpc.RPCError(jsonrpc.INVALID_REQUEST, f"Over {limit} bytes"))
        try:
            message = jsonrpc.parse(request.body)
        except jsonrpc.RPCError as e:
            return failure(400, e)
        caller = self.gateway.caller(request.header(b"authorization"))
        if message.method == "initialize":
            return self.initialize(message, caller)
        session_id = request.header(b"mcp-session-id")
        if session_id is not None:
            session = self.gateway.clients.find(session_id.decode("latin-1"), caller.context)
            if session is None:
                error = jsonrpc.RPCError(jsonrpc.INVALID_REQUEST, "Session not found")
                return failure(404, error, message.id)
            return await self.answer(message, request, caller, modern=False, session=session)
        if modern(message, request) or message.method == "server/discover":
            mismatch = header_mismatch(message, request)
            if mismatch is not None:
                error = jsonrpc.RPCError(jsonrpc.HEADER_MISMATCH, mismatch)
                return failure(400, error, message.id)
            version = protocol_version(message)
            if version is not None and version not in gateway.MODERN_VERSIONS:
                supported = [*gateway.MODERN_VERSIONS, *gateway.HANDSHAKE_VERSIONS]
                error = jsonrpc.RPCError(
                    jsonrpc.UNSUPPORTED_PROTOCOL_VERSION,
                    f"Unsupported protocol version: {version}",
                    {"supported": supported, "requested": version},
                )
                return failure(400, error, message.id)
            return await self.answer(message, request, caller, modern=True, session=None)
        error = jsonrpc.RPCError(jsonrpc.INVALID_REQUEST, "Bad Request: no valid session ID")
        return failure(400, error, message.id)

    def initialize(self, message: jsonrpc.Message, caller: lists.Caller) -> Reply:
        """A new session, belonging to the credentials that made it: an id that leaked is no
        use to anyone else (another caller gets 404)."""
        result = self.gateway.initialize(message.params)
        session = self.gateway.clients.open(result["protocolVersion"], caller.context)
        headers = [JSON, (b"mcp-session-id", session.id.encode())]
        return Reply(200, headers, jsonrpc.result(message.id, result))

    async def answer(
        self,
        message: jsonrpc.Message,
        request: Request,
        caller: lists.Caller,
        *,
        modern: bool,
        session: clients.Session | None,
    ) -> Reply:
        if not message.is_request:
            self.notification(message, session)
            return Reply(202, [])
        if message.method == "subscriptions/listen" and modern:
            return self.listen(message)
        if message.method in STREAMABLE and wants_progress(message, request):
            return self.progress_stream(message, gateway.Context(modern, caller), session)
        context = gateway.Context(modern, caller)
        try:
            result = await self.run(message, context, session)
        except jsonrpc.RPCError as e:
            return Reply(error_status(e, modern), [JSON], jsonrpc.error(message.id, e))
        return Reply(200, [JSON], answer_of(message.id, result, modern))

    async def run(
        self,
        message: jsonrpc.Message,
        context: gateway.Context,
        session: clients.Session | None,
    ) -> dict[str, Any] | bytes:
        """The gateway's answer, in a task a session's `notifications/cancelled` can cancel."""
        if session is None or message.id is None:
            return await self.gateway.handle(message, context)
        key = (session.id, message.id)
        task = asyncio.get_running_loop().create_task(self.gateway.handle(message, context))
        self.inflight[key] = task
        try:
            return await task
        except asyncio.CancelledError:
            if task.cancelled() and not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise jsonrpc.RPCError(jsonrpc.REQUEST_CANCELLED, "Request cancelled") from None
            raise
        finally:
            self.inflight.pop(key, None)
            task.cancel()

    def notification(self, message: jsonrpc.Message, session: clients.Session | None) -> None:
        request_id = message.params.get("requestId")
        if message.method != "notifications/cancelled" or session is None:
            return
        if isinstance(request_id, str | int) and not isinstance(request_id, bool):
            task = self.inflight.get((session.id, request_id))
            if task is not None:
                task.cancel()

    def listen(self, message: jsonrpc.Message) -> Reply:
        """`subscriptions/listen`: acknowledge the list notifications asked for, then stream."""
        asked = message.params.get("notifications")
        asked = asked if isinstance(asked, dict) else {}
        agreed = {field: True for field in clients.LIST_FILTERS.values() if asked.get(field)}
        wanted = frozenset(m for m, field in clients.LIST_FILTERS.items() if field in agreed)
        listener = self.gateway.clients.listen(wanted, subscription=message.id)
        meta = {"io.modelcontextprotocol/subscriptionId": message.id}
        ack = jsonrpc.notification(
            "notifications/subscriptions/acknowledged", {"notifications": agreed, "_meta": meta}
        )
        return Reply(200, list(SSE_HEADERS), stream=self.listening(listener, ack))

    async def listening(self, listener: clients.Listener, first: bytes) -> AsyncIterator[bytes]:
        try:
            async for chunk in listener.stream(first):
                yield chunk
        finally:
            self.gateway.clients.stop_listening(listener)

    def progress_stream(
        self,
        message: jsonrpc.Message,
        context: gateway.Context,
        session: clients.Session | None,
    ) -> Reply:
        return Reply(200, list(SSE_HEADERS), stream=self.with_progress(message, context, session))

    async def with_progress(
        self,
        message: jsonrpc.Message,
        context: gateway.Context,
        session: clients.Session | None,
    ) -> AsyncIterator[bytes]:
        """Progress notifications as they come, then the answer; closing it cancels the call."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(PROGRESS_QUEUE)

        async def progress(params: dict[str, Any]) -> None:
            if queue.full():
                queue.get_nowait()  # progress is lossy: a slow reader sees the latest, not all
            queue.put_nowait(clients.event(jsonrpc.notification("notifications/progress", params)))

        context = gateway.Context(context.modern, context.caller, progress)
        task = asyncio.get_running_loop().create_task(self.run(message, context, session))
        getter: asyncio.Future[bytes] | None = None
        try:
            while not task.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            try:
                answer = answer_of(message.id, task.result(), context.modern)
            except jsonrpc.RPCError as e:
                answer = jsonrpc.error(message.id, e)
            yield clients.event(answer)
        finally:
            if getter is not None:
                getter.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- GET and DELETE -----------------------------------------------------------------------

    async def get(self, request: Request) -> Reply:
        """A session's stream of notifications (session-based revisions)."""
        session = self.session_of(request)
        if isinstance(session, Reply):
            return session
        accept = request.header(b"accept") or b""
        if b"text/event-stream" not in accept:
            error = jsonrpc.RPCError(jsonrpc.INVALID_REQUEST, "GET needs Accept: text/event-stream")
            return failure(406, error)
        if session.listener is not None:
            self.gateway.clients.stop_listening(session.listener)  # one stream per session
        listener = session.listener = self.gateway.clients.listen(None)
        return Reply(200, list(SSE_HEADERS), stream=self.session_stream(session, listener))

    async def session_stream(
        self, session: clients.Session, listener: clients.Listener
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in listener.stream():
                yield chunk
        finally:
            self.gateway.clients.stop_listening(listener)
            if session.listener is listener:
                session.listener = None

    async def delete(self, request: Request) -> Reply:
        session = self.session_of(request)
        if isinstance(session, Reply):
            return session
        self.gateway.clients.end(session.id)
        return Reply(200, [JSON], b"{}")

    def session_of(self, request: Request) -> clients.Session | Reply:
        """The session a GET or DELETE names, or the answer refusing it: an `Origin` not
        allowed (403); the stateless revision has none (405, as the SDK's servers answer), and a
        session-based caller must name one (400, 404)."""
        refused = self.refused(request)
        if refused is not None:
            return refused
        version = request.header(b"mcp-protocol-version")
        if version is not None and version.decode("latin-1") in gateway.MODERN_VERSIONS:
            error = jsonrpc.RPCError(jsonrpc.INVALID_REQUEST, "The 2026-07-28 revision uses POST")
            return Reply(405, [JSON, (b"allow", b"POST")], jsonrpc.error(None, error))
        session_id = request.header(b"mcp-session-id")
        if session_id is None:
            error = jsonrpc.RPCError(jsonrpc.INVALID_REQUEST, "Bad Request: no valid session ID")
            return failure(400, error)
        context = self.gateway.caller(request.header(b"authorization")).context
        session = self.gateway.clients.find(session_id.decode("latin-1"), context)
        if session is None:
            return failure(404, jsonrpc.RPCError(jsonrpc.INVALID_REQUEST, "Session not found"))
        return session

    def refused(self, request: Request) -> Reply | None:
        """403 for a browser `Origin` the policy does not allow (DNS rebinding)."""
        origin = request.header(b"origin")
        if origin is None or origin.rstrip(b"/") in self.origins:
            return None
        error = jsonrpc.RPCError(jsonrpc.INVALID_REQUEST, "Forbidden: origin not allowed")
        return failure(403, error)

    def __repr__(self) -> str:
        return f"<MCPRoutes {self.gateway!r} inflight={len(self.inflight)}>"


def failure(status: int, error: jsonrpc.RPCError, id_: jsonrpc.RequestId | None = None) -> Reply:
    return Reply(status, [JSON], jsonrpc.error(id_, error))


def answer_of(id_: jsonrpc.RequestId | None, result: dict[str, Any] | bytes, modern: bool) -> bytes:
    if isinstance(result, bytes):
        return jsonrpc.result_raw(id_, result)
    return jsonrpc.result(id_, gateway.finished(result, modern))


def protocol_version(message: jsonrpc.Message) -> str | None:
    meta = message.params.get("_meta")
    version = (
        meta.get("io.modelcontextprotocol/protocolVersion") if isinstance(meta, dict) else None
    )
    return version if isinstance(version, str) else None


def modern(message: jsonrpc.Message, request: Request) -> bool:
    """A 2026-07-28 request: its envelope or its `MCP-Protocol-Version` header says so."""
    header = request.header(b"mcp-protocol-version")
    if header is not None and header.decode("latin-1") in gateway.MODERN_VERSIONS:
        return True
    return protocol_version(message) is not None


def error_status(error: jsonrpc.RPCError, modern: bool) -> int:
    """The HTTP status of an error answer: always 200 for sessions; for 2026-07-28, 400 for the
    caller's mistakes and 404 for an unknown method, as the SDK's servers answer."""
    if not modern:
        return 200
    if error.code == jsonrpc.METHOD_NOT_FOUND:
        return 404
    return 400 if error.code in CLIENT_ERRORS else 200


def header_mismatch(message: jsonrpc.Message, request: Request) -> str | None:
    """Why the routing headers of a 2026-07-28 request disagree with its body, if they do."""
    method = request.header(b"mcp-method")
    if method is None:
        return None if not message.is_request else "Mcp-Method header missing"
    if method.decode("latin-1") != message.method:
        return "Mcp-Method header does not match the body's method"
    field = jsonrpc.NAMED_METHODS.get(message.method)
    if field is not None:
        name = request.header(b"mcp-name")
        value = message.params.get(field)
        if name is None or name.decode("utf-8", "replace") != value:
            return "Mcp-Name header does not match the body"
    return None


def wants_progress(message: jsonrpc.Message, request: Request) -> bool:
    meta = message.params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return token is not None and b"text/event-stream" in (request.header(b"accept") or b"")
