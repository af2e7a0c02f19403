"""Embeddings cached per input: only the inputs not in the cache go upstream.

Sits between `routes.LLMRoutes.embeddings` and the dispatcher (the batching layer). Each input
has its own key (`cachekeys.EmbeddingKeys`: tenant, model, every option such as `dimensions` and
`encoding_format`, and the input), so a request with 90 of 100 inputs cached sends one
sub-request with the 10 misses (duplicates within a request are sent once). The answer is built
in input order, `index` = position in the caller's `input`, each vector replayed as the exact
JSON the upstream sent for it (float lists and base64 strings are never converted).

`usage` counts the tokens this request actually sent upstream, as the upstream reported them for
the sub-request; inputs served from the cache, or from another request's call in flight, count
zero. So usage summed over callers is what the provider bills, and a full hit reports 0 tokens.

Concurrent misses on one input share one upstream call (`cache.flights`: one flight per
sub-request, registered under each of its input keys), unless the request asked `no-cache`. The
answer says `x-sluice-cache: hit` when every input came from the cache (with `Age` of the oldest),
`miss` when some were fetched, `shared` when none were but some came from another request's
call in flight, `bypass` when the cache was not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import orjson

from sluice.api import CacheConfig
from sluice.proxy import metrics
from sluice.proxy.cache import flights, keyspace, store
from sluice.proxy.http import errors
from sluice.proxy.http.asgi import Reply, Request
from sluice.proxy.llm import cachekeys, coalescing, dispatching, responses

Item = coalescing.Item


@dataclasses.dataclass(slots=True)
class Gathered:
    """What one request has collected so far: vectors by key, tokens billed, upstream model."""

    vectors: dict[str, bytes] = dataclasses.field(default_factory=dict)
    tokens: int = 0
    model: str | None = None
    oldest: float | None = None
    fetched: bool = False
    batch: bytes | None = None
    """The id of a merged upstream call that brought some of the vectors (`x-sluice-batch`)."""
    shared: bool = False

    def result(self, read: bool) -> bytes:
        """What the answer's `x-sluice-cache` says of how its vectors were found."""
        if not read:
            return b"bypass"
        if self.fetched:
            return b"miss"
        return b"shared" if self.shared else b"hit"


@dataclasses.dataclass(frozen=True, slots=True)
class Fetched:
    """What one sub-request brought back: the vectors of its inputs, by key, and its usage."""

    vectors: dict[str, bytes]
    tokens: int
    model: str | None
    batch: bytes | None = None


Flight = Fetched | Reply
"""A sub-request's outcome: its vectors, or the upstream's error (for its own caller only)."""


class EmbeddingCache:
    """Caching of `/v1/embeddings` answers, input by input, per tenant."""

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
        self.prefix = config.redis.key_prefix
        self.ttl = config.ttl_seconds.embeddings
        self.flights: flights.Flights[str, Flight] = flights.Flights()
        self._counters = {
            result: metrics.cache_requests.labels("embeddings", result)
            for result in ("hit", "miss", "bypass")
        }
        self._saved = metrics.upstream_calls_saved.labels("embeddings", "cached")

    async def answer(
        self,
        request: Request,
        tenant: str,
        payload: dict[str, Any],
        fetch: responses.Fetch,
    ) -> Reply:
        inputs = coalescing.parse(payload.get("input"))
        read, write = self.policy(request)
        if inputs is None or not (read or write):
            self._counters["bypass"].inc()
            return responses.tagged(await fetch(request, payload), b"bypass")
        if self.config.share_across_tenants:
            tenant = keyspace.SHARED
        variant = self.variants.of(request.query, request.headers)
        maker = cachekeys.EmbeddingKeys(self.prefix, tenant, payload, variant)
        keys = [maker.key(item) for item in inputs.items]
        by_key = dict(zip(keys, inputs.items, strict=True))
        gathered = Gathered()
        if read:
            try:
                await self.look_up(list(by_key), gathered)
            except store.UnavailableError:
                self._counters["bypass"].inc()
                return responses.tagged(await fetch(request, payload), b"bypass")
        else:
            self._counters["bypass"].inc(len(by_key))
        missing = {k: item for k, item in by_key.items() if k not in gathered.vectors}
        if missing:
            failed = await self.gather(request, payload, fetch, missing, gathered, read, write)
            if failed is not None:
                return failed
        return self.assemble(payload, keys, gathered, read)

    def policy(self, request: Request) -> tuple[bool, bool]:
        if self.store is None or not self.ttl or self.config.mode == "off":
            return False, False
        if not cachekeys.faithful(request.body):
            return False, False
        return cachekeys.directives(request.header(b"cache-control"))

    async def look_up(self, keys: list[str], gathered: Gathered) -> None:
        values = await self.store.get_many(keys)  # type: ignore[union-attr]
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue
            stored_at, _, body = store.unpack(value)
            gathered.vectors[key] = body
            gathered.oldest = min(stored_at, gathered.oldest or stored_at)
        hits = len(gathered.vectors)
        self._counters["hit"].inc(hits)
        self._counters["miss"].inc(len(keys) - hits)

    async def gather(
        self,
        request: Request,
        payload: dict[str, Any],
        fetch: responses.Fetch,
        missing: dict[str, Item],
        gathered: Gathered,
        share: bool,
        write: bool,
    ) -> Reply | None:
        """Fetch the `missing` inputs, in a flight of this request's own and by following the
        flights under way; returns the upstream's error to this request's own sub-request. A
        flight that outlasts `patience` is left, and its inputs fetched without sharing."""
        while missing:
            led, followed = self.split(missing, share)
            if led:
                work = self.fetch(request, payload, fetch, led, write)
                outcome = await (
                    self.flights.wait(self.flights.launch(led, work)) if share else work
                )
                if isinstance(outcome, Reply):
                    return responses.tagged(outcome, b"miss")
                gathered.vectors.update(outcome.vectors)
                gathered.tokens += outcome.tokens
                gathered.model = outcome.model or gathered.model
                gathered.batch = outcome.batch or gathered.batch
                gathered.fetched = True
            for flight in set(followed.values()):
                try:
                    outcome = await self.flights.wait(flight, self.patience)
                except flights.AbandonedError:
                    share = False
                    continue
                if isinstance(outcome, Fetched):  # an error was its own caller's: fetch anew
                    gathered.vectors.update(
                        (k, v) for k, v in outcome.vectors.items() if k in followed
                    )
                    gathered.shared = True
            missing = {k: missing[k] for k in followed if k not in gathered.vectors}
        return None

    def split(
        self, missing: dict[str, Item], share: bool
    ) -> tuple[dict[str, Item], dict[str, asyncio.Task[Flight]]]:
        """The inputs this request fetches itself, and the flights under way it follows."""
        if not share:
            return missing, {}
        led: dict[str, Item] = {}
        followed: dict[str, asyncio.Task[Flight]] = {}
        for key, item in missing.items():
            flight = self.flights.get(key)
            if flight is None:
                led[key] = item
            else:
                followed[key] = flight
        return led, followed

    async def fetch(
        self,
        request: Request,
        payload: dict[str, Any],
        fetch: responses.Fetch,
        led: dict[str, Item],
        write: bool,
    ) -> Flight:
        """One sub-request with the `led` inputs; their vectors are stored unless `no-store`."""
        sub = {**payload, "input": list(led.values())}
        reply = await fetch(dataclasses.replace(request, body=orjson.dumps(sub)), sub)
        if reply.status != 200 or reply.stream is not None:
            return reply
        answer, vectors = _vectors(reply.body, len(led))
        fresh = dict(zip(led, vectors, strict=True))
        if write:
            await self.save(fresh)
        batch = next((v for k, v in reply.headers if k == dispatching.BATCH_HEADER), None)
        return Fetched(fresh, _prompt_tokens(answer), answer.get("model"), batch)

    async def save(self, fresh: dict[str, bytes]) -> None:
        now = self.clock()
        values = [(key, store.pack(now, 0, vector)) for key, vector in fresh.items()]
        with contextlib.suppress(store.UnavailableError):  # counted and logged by the backend
            await self.store.set_many(values, self.ttl)  # type: ignore[union-attr]

    def assemble(
        self, payload: dict[str, Any], keys: list[str], gathered: Gathered, read: bool
    ) -> Reply:
        """The caller's answer: every input's vector in order, and the tokens billed for it."""
        data = b",".join(
            b'{"object":"embedding","index":%d,"embedding":%b}' % (i, gathered.vectors[key])
            for i, key in enumerate(keys)
        )
        model = orjson.dumps(gathered.model or cachekeys.model_of(payload))
        usage = b'{"prompt_tokens":%d,"total_tokens":%d}' % (gathered.tokens, gathered.tokens)
        body = b'{"object":"list","data":[%b],"model":%b,"usage":%b}' % (data, model, usage)
        result = gathered.result(read)
        if result == b"hit":
            self._saved.inc()
        headers = [responses.JSON_TYPE, (responses.HEADER, result)]
        if gathered.batch is not None:
            headers.append((dispatching.BATCH_HEADER, gathered.batch))
        if result == b"hit" and gathered.oldest is not None:
            headers.append((b"age", b"%d" % max(0, int(self.clock() - gathered.oldest))))
        return Reply(200, headers, body)

    def __repr__(self) -> str:
        return f"<EmbeddingCache ttl={self.ttl}s store={self.store!r} {self.flights!r}>"


def _vectors(body: bytes, count: int) -> tuple[dict[str, Any], list[bytes]]:
    """The answer, and each input's embedding as JSON by `index`; a 502 when it does not match."""
    try:
        answer = coalescing.load(body)
        rows = coalescing.by_index(answer.get("data"), count)
        vectors = [orjson.dumps(row["embedding"]) for row in rows]
    except (coalescing.MalformedAnswerError, KeyError) as e:
        raise errors.upstream_bad_answer(f"embeddings for {count} inputs expected: {e}") from None
    return answer, vectors


def _prompt_tokens(answer: dict[str, Any]) -> int:
    usage = answer.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) else 0
