"""The Redis backend: shared by replicas, bounded in time, and never the reason a request fails.

One node, a Sentinel-watched primary or a Redis Cluster, whichever client `redisclients.build`
makes of the config; at most `cache.redis.poolSize` commands in flight. One
`SET key value PX ttl` per write, `MGET` and pipelines for many keys, every key under
`cache.redis.keyPrefix` (see `keyspace.layout`). Each operation on the request path gets
`timeoutMilliseconds` in all (waiting for a pooled connection included) and no retries; a failure
or timeout raises `store.UnavailableError` (the caller bypasses the cache), counts in
`sluice_cache_backend_errors_total` and is logged at most once per `LOG_INTERVAL_SECONDS`.
A `breaker.CircuitBreaker` stops calling a Redis that keeps failing and lets one probe through
now and then: a failover (primary killed) is a short bypass until the client finds the new one.
Invalidation (admin, off the request path) scans with key patterns and has a longer deadline.

On a cluster, reads of many keys are split per slot (`MGET` per slot, pipelined to each primary
at once) rather than forced into one slot with hash tags: a hash tag per tenant would put a
tenant's whole cache on one primary, so one busy tenant would make one hot, full node, and the
cache needs no multi-key atomicity that only one slot could give. Keys keep one layout for every
topology, so the admin's patterns are the same; `SCAN` runs on every primary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis.exceptions

from sluice.api import RedisConfig
from sluice.proxy import metrics
from sluice.proxy.cache import breaker, keyspace, redisclients, store
from sluice.proxy.http import errors

log = logging.getLogger(__name__)

T = TypeVar("T")
LOG_INTERVAL_SECONDS = 10.0
ADMIN_TIMEOUT_SECONDS = 60.0
WARM_UP_SECONDS = 2.0
WARM_CONNECTIONS = 8
SCAN_COUNT = 1000
# RedisClusterException is no RedisError: the cluster client raises it when no node answers.
FAILURES = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,
    TimeoutError,
)


class RedisCache:
    """A `store.Cache` in Redis that fails open."""

    def __init__(
        self,
        client: redisclients.Client,
        prefix: str,
        timeout: float,
        *,
        in_flight: int = 32,
        circuit: breaker.CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = "redis"
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self.circuit = circuit or breaker.CircuitBreaker()
        self.clock = clock
        # Commands in flight, at most one connection each (per node on a cluster): the cluster
        # and Sentinel pools fail rather than wait when full (see `redisclients`).
        self._in_flight = asyncio.Semaphore(in_flight)
        self._warm = min(WARM_CONNECTIONS, in_flight)
        self._last_log = -LOG_INTERVAL_SECONDS
        self._unlogged = 0

    @classmethod
    def from_config(cls, config: RedisConfig, environ: Mapping[str, str]) -> RedisCache:
        client = redisclients.build(config, environ)
        timeout = config.timeout_milliseconds / 1000
        return cls(client, config.key_prefix, timeout, in_flight=config.pool_size)

    async def start(self) -> None:
        """Open some of the pool's connections (on a cluster: to every primary, after reading
        the slot map) before the proxy says it is ready, within `WARM_UP_SECONDS`: a cold pool
        opening connections under the first burst of requests would miss the request-path
        timeout and bypass the cache. A Redis that is down does not hold the proxy back: it
        starts, and fails open, as ever."""
        try:
            async with asyncio.timeout(WARM_UP_SECONDS):
                await asyncio.gather(*(redisclients.ping(self.client) for _ in range(self._warm)))
        except FAILURES as e:
            log.warning(
                "redis not reachable at start-up (%s); the cache is bypassed until it is",
                errors.describe(e),
            )

    async def close(self) -> None:
        await redisclients.close(self.client)

    async def get(self, key: str) -> bytes | None:
        # Without `decode_responses` the client returns bytes; its stubs allow for str as well.
        return cast("bytes | None", await self._call("get", lambda: self.client.get(key)))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values = await self._call("mget", lambda: redisclients.mget(self.client, keys))
        return cast("list[bytes | None]", values)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call("set", lambda: self.client.set(key, value, px=_milliseconds(ttl)))

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        if not items:
            return
        await self._call("set_many", lambda: self._pipelined_set(items, _milliseconds(ttl)))

    async def invalidate(self, selection: keyspace.Selection) -> int:
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT_SECONDS), self._in_flight:
                patterns = selection.patterns(self.prefix)
                return sum([await self._unlink_matching(p) for p in patterns])
        except FAILURES as e:
            self._failed("invalidate", e)
            raise store.UnavailableError(errors.describe(e)) from None

    async def _pipelined_set(self, items: Sequence[tuple[str, bytes]], ttl_ms: int) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for key, value in items:
                pipe.set(key, value, px=ttl_ms)
            return await pipe.execute()

    async def _unlink_matching(self, pattern: str) -> int:
        """On a cluster `scan_iter` walks every primary and `unlink` splits its keys per slot."""
        deleted = 0
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=pattern, count=SCAN_COUNT):
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                deleted += await self.client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self.client.unlink(*batch)
        return deleted

    async def _call(self, operation: str, command: Callable[[], Awaitable[T]]) -> T:
        """A request-path command under the breaker and the timeout, or UnavailableError."""
        if not self.circuit.allow(self.clock()):
            raise store.UnavailableError("circuit open")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout), self._in_flight:
                result = await command()
        except FAILURES as e:
            self.circuit.failed(self.clock())
            self._failed(operation, e)
            raise store.UnavailableError(errors.describe(e)) from None
        except BaseException:
            self.circuit.abandoned()
            raise
        self.circuit.succeeded()
        metrics.redis_duration.labels(operation).observe(time.perf_counter() - started)
        return result

    def _failed(self, operation: str, error: BaseException) -> None:
        metrics.cache_backend_errors.labels(self.name, operation).inc()
        now = self.clock()
        if now - self._last_log < LOG_INTERVAL_SECONDS:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more failures since the last message)" if self._unlogged else ""
        log.warning(
            "redis %s failed: %s; the cache is bypassed%s; %r",
            operation,
            errors.describe(error),
            more,
            self.circuit,
        )
        self._last_log = now
        self._unlogged = 0

    def __repr__(self) -> str:
        timeout = f"{self.timeout:g}s"
        where = redisclients.describe(self.client)
        return f"<RedisCache {where} prefix={self.prefix!r} timeout={timeout} {self.circuit!r}>"


def _milliseconds(ttl: float) -> int:
    return max(1, round(ttl * 1000))
