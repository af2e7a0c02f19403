"""The callers connected to `/mcp`: sessions of the session-based revisions, and the streams on
which they (and stateless 2026-07-28 callers) hear notifications.

A session is made by `initialize` and named by `Mcp-Session-Id`, and belongs to the auth context
that made it; it ends with `DELETE`, or when it has been idle for `IDLE_SECONDS`, or when newer
ones of its own context (`MAX_SESSIONS_PER_CONTEXT`), or of all (`MAX_SESSIONS`), push it out (a
caller that comes back with an unknown id gets 404 and initialises again, as the transport says).
A `Listener` is one open stream (a session's `GET`, or a `subscriptions/listen` request) with a
bounded queue: a caller that does not read its stream is dropped rather than let the queue grow.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from sluice.proxy import metrics

IDLE_SECONDS = 3600.0
MAX_SESSIONS = 10000
MAX_SESSIONS_PER_CONTEXT = 64
"""Sessions one auth context may hold: a flood of `initialize` pushes out its own oldest
sessions, never another caller's."""
QUEUE_LIMIT = 256
KEEPALIVE_SECONDS = 15.0
"""An SSE comment this often on an idle stream, so a caller that left is noticed."""

LIST_FILTERS = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}
"""Which `subscriptions/listen` filter field lets each notification through."""


@dataclasses.dataclass(eq=False)
class Listener:
    """One open notification stream."""

    wanted: frozenset[str] | None
    """Methods this stream asked for; None: all (a session's `GET` stream)."""
    subscription: Any = None
    """The `subscriptions/listen` request's id, stamped on every notification it carries."""
    queue: asyncio.Queue[bytes | None] = dataclasses.field(
        default_factory=lambda: asyncio.Queue(QUEUE_LIMIT)
    )
    dropped: bool = False

    def offer(self, method: str, params: dict[str, Any]) -> None:
        if self.dropped or (self.wanted is not None and method not in self.wanted):
            return
        if self.subscription is not None:
            meta = {
                **params.get("_meta", {}),
                "io.modelcontextprotocol/subscriptionId": self.subscription,
            }
            params = {**params, "_meta": meta}
        message = orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params})
        try:
            self.queue.put_nowait(event(message))
        except asyncio.QueueFull:
            self.close()  # a caller that stopped reading; it re-lists when it reconnects

    def close(self) -> None:
        """End the stream (the queue's end marker is always let in)."""
        self.dropped = True
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()

    async def stream(self, first: bytes | None = None) -> AsyncIterator[bytes]:
        """The SSE body: `first` (an acknowledgement), then notifications, keep-alives between."""
        if first is not None:
            yield event(first)
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    chunk = await self.queue.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if chunk is None:
                return
            yield chunk


@dataclasses.dataclass(eq=False)
class Session:
    """One caller's session (session-based revisions only)."""

    id: str
    protocol_version: str
    context: str
    """The auth context that made it; only that one may use it."""
    seen: float
    listener: Listener | None = None


class Clients:
    """Every session and every open stream of this proxy."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self.by_context: dict[str, collections.OrderedDict[str, None]] = {}
        self.listeners: set[Listener] = set()
        self._gauge = metrics.mcp_sessions.labels("client")

    def open(self, protocol_version: str, context: str) -> Session:
        self.expire()
        own = self.by_context.setdefault(context, collections.OrderedDict())
        while len(own) >= MAX_SESSIONS_PER_CONTEXT:
            self.end(next(iter(own)))
        while len(self.sessions) >= MAX_SESSIONS:
            self.end(next(iter(self.sessions)))
        session = Session(secrets.token_hex(16), protocol_version, context, self.clock())
        self.sessions[session.id] = session
        self.by_context.setdefault(context, collections.OrderedDict())[session.id] = None
        self._gauge.set(len(self.sessions))
        return session

    def find(self, session_id: str, context: str) -> Session | None:
        session = self.sessions.get(session_id)
        if session is None or session.context != context:
            return None
        if self.clock() - session.seen > IDLE_SECONDS:
            return None
        session.seen = self.clock()
        self.sessions.move_to_end(session_id)
        return session

    def end(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        self._gauge.set(len(self.sessions))
        if session is None:
            return False
        own = self.by_context.get(session.context)
        if own is not None:
            own.pop(session_id, None)
            if not own:
                del self.by_context[session.context]
        if session.listener is not None:
            self.stop_listening(session.listener)
        return True

    def expire(self) -> None:
        """End the sessions idle for `IDLE_SECONDS` (an open stream is not idle)."""
        now = self.clock()
        for session in list(self.sessions.values()):
            if now - session.seen <= IDLE_SECONDS:
                return  # in order of last use: the rest are younger
            if session.listener is None:
                self.end(session.id)

    def listen(self, wanted: frozenset[str] | None, subscription: Any = None) -> Listener:
        listener = Listener(wanted, subscription)
        self.listeners.add(listener)
        return listener

    def stop_listening(self, listener: Listener) -> None:
        listener.close()
        self.listeners.discard(listener)

    def broadcast(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Tell every open stream that wants it."""
        for listener in list(self.listeners):
            listener.offer(method, params or {})
            if listener.dropped:
                self.listeners.discard(listener)

    def close(self) -> None:
        for session_id in list(self.sessions):
            self.end(session_id)
        for listener in list(self.listeners):
            self.stop_listening(listener)

    def __repr__(self) -> str:
        return f"<Clients sessions={len(self.sessions)} listeners={len(self.listeners)}>"


def event(message: bytes) -> bytes:
    return b"event: message\ndata: " + message + b"\n\n"
