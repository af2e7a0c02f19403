"""The response cache of chat and legacy completions: look up, else fetch once, store, and tag.

Sits between the handlers of `routes.LLMRoutes` and the dispatcher (the batching layer):

    answer(): policy -> key -> get -> hit: render (JSON or replayed SSE, `Age`)
                                   -> miss: launch a flight (fetch, store, share) or follow one

* Policy: `cache.mode` (`deterministic` caches only `cachekeys.deterministic` requests), a TTL
  of 0 for the kind, and the request's `Cache-Control` (`no-cache` skips the read, `no-store`
  the write) decide whether the cache is read and written.
* Only a complete 200 answer is stored: a JSON body that parses, or a stream that reached
  `[DONE]` (`replay.Recorder`); streamed misses reach the caller chunk by chunk as they arrive.
* Concurrent misses on one key share one upstream call (`cache.flights`): the flight runs as its
  own task, hands its first caller the reply as it comes (chunk by chunk for a stream), and ends
  with what the followers get: the stored entry, or its non-200 reply. When it ends without one
  (a broken stream, a streaming caller gone), a follower launches the next try; a non-streamed
  flight goes on for its followers when its first caller hangs up.
* Every answer says `x-sluice-cache`: `hit` (from the cache, with `Age`), `miss` (the cache was
  read and had nothing usable), `shared` (the answer of another request's call in flight), or
  `bypass` (not read: not cacheable, `no-cache`, Redis down).
* A follower waits on a flight for `llm.followerWaitSeconds` at most, then makes its own call;
  the flight is cancelled (its upstream call closed) when every caller waiting on it has left.
* Only the body is stored, never the upstream's headers: a hit sends `content-type`,
  `x-sluice-cache`, `age` and `content-length` (uvicorn adds `date`, the app `x-request-id`).
  The upstream's `date`, `server`, request id, rate-limit and processing-time headers described
  the original call, and would be stale or wrong on a replay. A miss carries the upstream's
  headers as sent (its request id as `x-upstream-request-id`, `http.tracing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from sluice.api import CacheConfig
from sluice.proxy import metrics
from sluice.proxy.cache import flights, keyspace, store
from sluice.proxy.http import asgi, errors
from sluice.proxy.http.asgi import Headers, Reply, Request
from sluice.proxy.llm import cachekeys, replay, usage

HEADER = cachekeys.HEADER
JSON_TYPE = (b"content-type", b"application/json")
SSE_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")
ENDPOINTS = {"chat": "chat_completions", "completions": "completions"}
"""The cache's kinds as the upstream metrics name their endpoints."""


Fetch = Callable[[Request, dict[str, Any]], Awaitable[Reply]]
"""The way upstream on a miss (the dispatcher, for the caller), given the request to send."""


@dataclasses.dataclass(slots=True)  # not frozen: a frozen __init__ is slower, and this is per hit
class Entry:
    """A stored answer in its non-streamed JSON form (see `replay.py`)."""

    stored_at: float
    flags: int
    body: bytes

    @classmethod
    def unpack(cls, value: bytes) -> Entry:
        return cls(*store.unpack(value))

    def serves(self, streamed: bool, include_usage: bool) -> bool:
        """Can this entry answer the request? Only if it has the usage the request would get."""
        needs_usage = include_usage or not streamed
        return not needs_usage or bool(self.flags & store.HAS_USAGE)


Shared = Entry | Reply | None
"""What a flight ends with for its followers: the entry it stored, its non-200 reply, or None
(nothing to share: they try again)."""


class ResponseCache:
    """Caching of `/v1/chat/completions` and `/v1/completions` answers, per tenant."""

    def __init__(
        self,
        config: CacheConfig,
        backend: store.Cache | None,
        clock: Callable[[], float] = time.time,
        *,
        variants: cachekeys.Variants | None = None,
        patience: float | None = None,
    ) -> None:
        self.config = config
        self.store = backend
        self.clock = clock
        self.variants = variants or cachekeys.Variants()
        self.patience = patience
        self.keys = cachekeys.ResponseKeys(config.redis.key_prefix)
        self.ttls = {"chat": config.ttl_seconds.chat, "completions": config.ttl_seconds.completions}
        self.flights: flights.Flights[str, Shared] = flights.Flights()
        # Bound once: `.labels()` on every request is a measurable part of a cache hit.
        self._counters = {
            (kind, result): metrics.cache_requests.labels(kind, result)
            for kind in self.ttls
            for result in ("hit", "miss", "bypass")
        }
        self._saved = {
            (kind, reason): metrics.upstream_calls_saved.labels(ENDPOINTS[kind], reason)
            for kind in self.ttls
            for reason in ("cached", "shared")
        }

    async def answer(
        self, kind: str, request: Request, tenant: str, payload: dict[str, Any], fetch: Fetch
    ) -> Reply:
        """The answer to one chat or completions request, from the cache or from `fetch`."""
        read, write = self.policy(kind, request, payload)
        if not read:
            self._counters[kind, "bypass"].inc()
            if not write:
                return tagged(await fetch(request, payload), b"bypass")
        if self.config.share_across_tenants:
            tenant = keyspace.SHARED
        variant = self.variants.of(request.query, request.headers)
        key = self.keys.key(kind, tenant, request.body, payload, variant)
        streamed = payload.get("stream") is True
        include_usage = streamed and _include_usage(payload)
        if read:
            try:
                value = await self.store.get(key)  # type: ignore[union-attr]
            except store.UnavailableError:
                self._counters[kind, "bypass"].inc()
                return tagged(await fetch(request, payload), b"bypass")
            if value is not None:
                entry = Entry.unpack(value)
                if entry.serves(streamed, include_usage):
                    self._counters[kind, "hit"].inc()
                    self.saved(kind, "cached", entry)
                    return self.render(kind, entry, streamed, include_usage, b"hit")
            self._counters[kind, "miss"].inc()
        if not (read and write):
            reply = await fetch(request, payload)
            header = b"miss" if read else b"bypass"
            return await self.keep(kind, key, reply, write=write, header=header)
        return await self.share(kind, key, request, payload, fetch)

    def policy(self, kind: str, request: Request, payload: dict[str, Any]) -> tuple[bool, bool]:
        """(read the cache, write the cache) for this request."""
        if self.store is None or not self.ttls[kind] or self.config.mode == "off":
            return False, False
        if self.config.mode == "deterministic" and not cachekeys.deterministic(payload):
            return False, False
        if not cachekeys.faithful(request.body):
            return False, False
        return cachekeys.directives(request.header(b"cache-control"))

    async def share(
        self,
        kind: str,
        key: str,
        request: Request,
        payload: dict[str, Any],
        fetch: Fetch,
    ) -> Reply:
        """Launch the flight for `key`, or follow the one under way (for `patience` seconds at
        most: then this request makes its own call)."""
        streamed = payload.get("stream") is True
        include_usage = streamed and _include_usage(payload)
        while True:
            flight = self.flights.get(key)
            if flight is None:
                handoff: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
                flight = self.flights.launch(
                    (key,), self.fly(kind, key, request, payload, fetch, handoff)
                )
                with self.flights.member(flight):  # the flight stops if its launcher leaves alone
                    return await handoff
            try:
                shared = await self.flights.wait(flight, self.patience)
            except flights.AbandonedError:
                reply = await fetch(request, payload)
                return await self.keep(kind, key, reply, write=True, header=b"miss")
            if isinstance(shared, Reply):
                headers = [h for h in shared.headers if h[0] != HEADER]
                return tagged(Reply(shared.status, headers, shared.body), b"shared")
            if shared is not None and shared.serves(streamed, include_usage):
                self.saved(kind, "shared", shared)
                return self.render(kind, shared, streamed, include_usage, b"shared", age=False)

    async def fly(
        self,
        kind: str,
        key: str,
        request: Request,
        payload: dict[str, Any],
        fetch: Fetch,
        handoff: asyncio.Future[Reply],
    ) -> Shared:
        """One flight: fetch, hand the reply to the caller who launched it, store, and end with
        what the followers get. A stream ends the flight when it ends."""
        try:
            reply = await fetch(request, payload)
        except errors.ProxyError as e:
            _hand(handoff, error=e)
            return tagged(asgi.error_reply(e), b"miss")
        except BaseException:
            _hand(handoff, error=errors.internal())  # a bug, or the flight cancelled at shutdown
            raise
        reply = await self.keep(kind, key, reply, write=True, header=b"miss")
        recording = reply.stream if isinstance(reply.stream, Recording) else None
        if not _hand(handoff, reply=reply) and reply.stream is not None:
            await asgi.aclose(reply.stream)  # its caller left before the first byte
        if recording is not None:
            return await recording.finished
        if reply.status != 200:
            return None if reply.stream is not None else reply
        return self.entry(reply)

    async def keep(self, kind: str, key: str, reply: Reply, *, write: bool, header: bytes) -> Reply:
        """Tag the fetched reply; store it once it is complete.

        A whole answer is stored before it is returned, so the caller's next identical request
        finds it; a stream is stored when it ends (`Recording`).
        """
        tagged(reply, header)
        if reply.stream is not None:
            if reply.status == 200:
                reply.stream = Recording(self, kind, key, reply.stream, write=write)
            return reply
        entry = self.entry(reply) if reply.status == 200 else None
        if entry is not None and write:
            await self.save(kind, key, entry)
        return reply

    def entry(self, reply: Reply) -> Entry | None:
        """The entry for a complete 200 JSON answer; None for anything else."""
        try:
            answer = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            return None
        flags = store.HAS_USAGE if answer.get("usage") is not None else 0
        return Entry(self.clock(), flags, reply.body)

    async def save(self, kind: str, key: str, entry: Entry) -> None:
        value = store.pack(entry.stored_at, entry.flags, entry.body)
        # A failure is counted and logged by the backend; the answer goes out all the same.
        with contextlib.suppress(store.UnavailableError):
            await self.store.set(key, value, self.ttls[kind])  # type: ignore[union-attr]

    def saved(self, kind: str, reason: str, entry: Entry) -> None:
        """Count the upstream call, and its tokens, that an answer without one saved."""
        self._saved[kind, reason].inc()
        if entry.flags & store.HAS_USAGE:
            usage.saved(ENDPOINTS[kind], entry.body)

    def render(
        self,
        kind: str,
        entry: Entry,
        streamed: bool,
        include_usage: bool,
        header: bytes,
        *,
        age: bool = True,
    ) -> Reply:
        """The entry as this request's answer: its JSON, or SSE for a streamed request."""
        if streamed:
            headers: Headers = [SSE_TYPE, (HEADER, header)]
            body = replay.replay(kind, entry.body, include_usage)
        else:
            headers, body = [JSON_TYPE, (HEADER, header)], entry.body
        if age:
            seconds = max(0, int(self.clock() - entry.stored_at))
            headers.append((b"age", str(seconds).encode()))
        return Reply(200, headers, body)

    def __repr__(self) -> str:
        return f"<ResponseCache mode={self.config.mode} store={self.store!r} {self.flights!r}>"


class Recording:
    """A streamed miss on its way to the caller: passed on chunk by chunk as it arrives, stored
    once it reached `[DONE]`; `finished` then holds the entry (None for a stream not to keep).

    A class rather than an async generator: `aclose` must settle `finished` even when the stream
    was never iterated, and a generator that never started skips its `finally`.
    """

    def __init__(
        self,
        cache: ResponseCache,
        kind: str,
        key: str,
        stream: AsyncIterator[bytes],
        *,
        write: bool,
    ) -> None:
        self.cache = cache
        self.key = key
        self.stream = stream
        self.recorder = replay.Recorder(kind)
        self.write = write
        self.finished: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()

    def __aiter__(self) -> Recording:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await anext(self.stream)
        except StopAsyncIteration:
            await self.finish()
            raise
        self.recorder.feed(chunk)
        return chunk

    async def finish(self) -> None:
        body = self.recorder.result()
        entry = None
        if body is not None:
            flags = store.HAS_USAGE if self.recorder.usage is not None else 0
            entry = Entry(self.cache.clock(), flags, body)
            if self.write:
                await self.cache.save(self.recorder.kind, self.key, entry)
        self.settle(entry)

    async def aclose(self) -> None:
        if self.recorder.done and not self.finished.done():
            await self.finish()  # the caller read to `[DONE]` and left before the stream's end
        self.settle(None)  # a no-op once `finish` has settled it
        await asgi.aclose(self.stream)

    def settle(self, entry: Entry | None) -> None:
        if not self.finished.done():
            self.finished.set_result(entry)

    def __repr__(self) -> str:
        return f"<Recording {self.key} {self.recorder!r}>"


def tagged(reply: Reply, header: bytes) -> Reply:
    """The reply, saying `header` as its `x-sluice-cache` unless a layer below said it (the
    dispatcher's `shared`)."""
    if not any(name == HEADER for name, _ in reply.headers):
        reply.headers.append((HEADER, header))
    return reply


def _include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _hand(
    handoff: asyncio.Future[Reply],
    *,
    reply: Reply | None = None,
    error: BaseException | None = None,
) -> bool:
    """Give the flight's first caller its reply or error; False when that caller has left."""
    if handoff.done():
        return False
    if error is not None:
        handoff.set_exception(error)
    else:
        handoff.set_result(reply)  # type: ignore[arg-type]
    return True
