"""Embeddings cached per input: only the inputs not in the cache go upstream.

Sits between `llm.LLMRoutes.embeddings` and `fetch_embeddings` (the batching layer). Each input
has its own key (`cachekeys.EmbeddingKeys`: tenant, model, every option such as `dimensions` and
`encoding_format`, and the input), so a request with 90 of 100 inputs cached sends one
sub-request with the 10 misses (duplicates within a request are sent once). The answer is built
in input order, `index` = position in the caller's `input`, each vector replayed as the exact
JSON the upstream sent for it (float lists and base64 strings are never converted).

`usage` counts the tokens this request actually sent upstream, as the upstream reported them for
the sub-request; inputs served from the cache, or from another request's call in flight, count
zero. So usage summed over callers is what the provider bills, and a full hit reports 0 tokens.

Concurrent misses on one input share one upstream call (`flights.Flights`, per input key). The
answer says `x-sluice-cache: hit` when every input came from the cache (with `Age` of the oldest),
`miss` when some were fetched, `bypass` when the cache was not read.
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
from sluice.proxy import cachekeys, caching, errors, flights, metrics, responses
from sluice.proxy.asgi import Reply, Request

Item = str | list[int]


@dataclasses.dataclass(slots=True)
class Gathered:
    """What one request has collected so far: vectors by key, tokens billed, upstream model."""

    vectors: dict[str, bytes] = dataclasses.field(default_factory=dict)
    tokens: int = 0
    model: str | None = None
    oldest: float | None = None
    fetched: bool = False
    write: bool = True
    """False under `Cache-Control: no-store`: fetched vectors are not stored."""


class VectorCache:
    """Caching of `/v1/embeddings` answers, input by input, per tenant."""

    def __init__(
        self,
        config: CacheConfig,
        store: caching.Cache | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.prefix = config.redis.key_prefix
        self.ttl = config.ttl_seconds.embeddings
        self.flights: flights.Flights[bytes] = flights.Flights()
        self._counters = {
            result: metrics.cache_requests.labels("embeddings", result)
            for result in ("hit", "miss", "bypass")
        }

    async def answer(
        self,
        request: Request,
        tenant: str,
        payload: dict[str, Any],
        fetch: responses.Fetch,
    ) -> Reply:
        items = _items(payload.get("input"))
        read, write = self.policy(request)
        if items is None or not (read or write):
            self._counters["bypass"].inc()
            return responses.tagged(await fetch(request, payload), b"bypass")
        if self.config.share_across_tenants:
            tenant = cachekeys.SHARED
        maker = cachekeys.EmbeddingKeys(self.prefix, tenant, payload)
        keys = [maker.key(item) for item in items]
        by_key = dict(zip(keys, items, strict=True))
        gathered = Gathered(write=write)
        if read:
            try:
                await self.look_up(list(by_key), gathered)
            except caching.UnavailableError:
                self._counters["bypass"].inc()
                return responses.tagged(await fetch(request, payload), b"bypass")
        else:
            self._counters["bypass"].inc(len(by_key))
        missing = {k: item for k, item in by_key.items() if k not in gathered.vectors}
        if missing:
            failed = await self.gather(request, payload, fetch, missing, gathered, read)
            if failed is not None:
                return failed
        return self.assemble(payload, keys, gathered, read)

    def policy(self, request: Request) -> tuple[bool, bool]:
        if self.store is None or not self.ttl or self.config.mode == "off":
            return False, False
        return cachekeys.directives(request.header(b"cache-control"))

    async def look_up(self, keys: list[str], gathered: Gathered) -> None:
        values = await self.store.get_many(keys)  # type: ignore[union-attr]
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue
            stored_at, _, body = caching.unpack(value)
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
    ) -> Reply | None:
        """Fetch the `missing` inputs, leading or following flights; returns an upstream error."""
        while missing:
            led, followed = self.split(missing, share)
            try:
                failed = await self.fetch(request, payload, fetch, led, gathered)
            finally:
                for key in led:  # no-op for those landed with their vector
                    self.flights.land(key, None)
            if failed is not None:
                return failed
            outcomes = await asyncio.gather(*(self.flights.wait(f) for f in followed.values()))
            for key, vector in zip(followed, outcomes, strict=True):
                if vector is not None:
                    gathered.vectors[key] = vector
            missing = {k: missing[k] for k in followed if k not in gathered.vectors}
        return None

    def split(
        self, missing: dict[str, Item], share: bool
    ) -> tuple[dict[str, Item], dict[str, asyncio.Future[bytes | None]]]:
        """The inputs this request leads (fetches), and the flights it follows."""
        if not share:
            return missing, {}
        led: dict[str, Item] = {}
        followed: dict[str, asyncio.Future[bytes | None]] = {}
        for key, item in missing.items():
            flight = self.flights.join(key)
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
        gathered: Gathered,
    ) -> Reply | None:
        """One sub-request with the `led` inputs; their vectors are stored and shared."""
        if not led:
            return None
        sub = {**payload, "input": list(led.values())}
        reply = await fetch(dataclasses.replace(request, body=orjson.dumps(sub)), sub)
        if reply.status != 200 or reply.stream is not None:
            return responses.tagged(reply, b"miss")
        answer = orjson.loads(reply.body)
        vectors = _vectors(answer, len(led))
        fresh = dict(zip(led, vectors, strict=True))
        gathered.vectors.update(fresh)
        gathered.tokens += _prompt_tokens(answer)
        gathered.model = answer.get("model") or gathered.model
        gathered.fetched = True
        if gathered.write:  # `Cache-Control: no-store` shares in flight but keeps nothing
            await self.save(fresh)
        for key, vector in fresh.items():
            self.flights.land(key, vector)
        return None

    async def save(self, fresh: dict[str, bytes]) -> None:
        now = self.clock()
        values = [(key, caching.pack(now, 0, vector)) for key, vector in fresh.items()]
        with contextlib.suppress(caching.UnavailableError):  # counted and logged by the backend
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
        result = b"bypass" if not read else b"miss" if gathered.fetched else b"hit"
        headers = [responses.JSON_TYPE, (responses.HEADER, result)]
        if result == b"hit" and gathered.oldest is not None:
            headers.append((b"age", b"%d" % max(0, int(self.clock() - gathered.oldest))))
        return Reply(200, headers, body)

    def __repr__(self) -> str:
        return f"<VectorCache ttl={self.ttl}s store={self.store!r} {self.flights!r}>"


def _items(value: Any) -> list[Item] | None:
    """The inputs as a list, or None when they are not a shape to cache (the upstream judges)."""
    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return [value]
    if all(isinstance(x, str) and x for x in value):
        return value
    if all(isinstance(x, list) and x and all(isinstance(t, int) for t in x) for x in value):
        return value
    return None


def _vectors(answer: Any, count: int) -> list[bytes]:
    """Each input's embedding as JSON, by `index`; a 502 when the answer does not match."""
    data = answer.get("data") if isinstance(answer, dict) else None
    by_index = {}
    for item in data if isinstance(data, list) else ():
        if isinstance(item, dict) and isinstance(item.get("index"), int) and "embedding" in item:
            by_index[item["index"]] = orjson.dumps(item["embedding"])
    if sorted(by_index) != list(range(count)):
        raise errors.ProxyError(
            502,
            f"The upstream's embeddings answer does not match the {count} inputs sent.",
            type="upstream_error",
            code="upstream_bad_answer",
        )
    return [by_index[i] for i in range(count)]


def _prompt_tokens(answer: dict[str, Any]) -> int:
    usage = answer.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) else 0
