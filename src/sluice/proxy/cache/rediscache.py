"""The Redis backend: shared by replicas, bounded in time, and never the reason a request fails.

`redis.asyncio` over a blocking connection pool of `cache.redis.poolSize` connections; one
`SET key value PX ttl` per write, `MGET` and pipelines for many keys, every key under
`cache.redis.keyPrefix` (see `keyspace.layout`). Each operation on the request path gets
`timeoutMilliseconds` in all (waiting for a pooled connection included) and no retries; a failure
or timeout raises `store.UnavailableError` (the caller bypasses the cache), counts in
`sluice_cache_backend_errors_total` and is logged at most once per `LOG_INTERVAL_SECONDS`.
A `breaker.CircuitBreaker` stops calling a Redis that keeps failing and lets one probe through
now and then. Invalidation (admin, off the request path) scans with key patterns and has a
longer deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sluice.api import ConfigError, RedisConfig
from sluice.proxy import metrics
from sluice.proxy.cache import breaker, keyspace, store
from sluice.proxy.http import errors

log = logging.getLogger(__name__)

T = TypeVar("T")
LOG_INTERVAL_SECONDS = 10.0
ADMIN_TIMEOUT_SECONDS = 60.0
WARM_UP_SECONDS = 2.0
WARM_CONNECTIONS = 8
SCAN_COUNT = 1000
FAILURES = (redis.exceptions.RedisError, OSError, TimeoutError)


class RedisCache:
    """A `store.Cache` in Redis that fails open."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        prefix: str,
        timeout: float,
        *,
        circuit: breaker.CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = "redis"
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self.circuit = circuit or breaker.CircuitBreaker()
        self.clock = clock
        self._last_log = -LOG_INTERVAL_SECONDS
        self._unlogged = 0

    @classmethod
    def from_config(cls, config: RedisConfig, environ: Mapping[str, str]) -> RedisCache:
        url = environ.get(config.url_env)
        if not url:
            raise ConfigError(f"cache.redis.urlEnv: environment variable {config.url_env} is unset")
        timeout = config.timeout_milliseconds / 1000
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=config.pool_size,
            timeout=timeout,
            socket_connect_timeout=timeout,
            # A backstop only: request-path calls are bounded by `timeout` through asyncio.
            socket_timeout=ADMIN_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(redis.asyncio.Redis(connection_pool=pool), config.key_prefix, timeout)

    async def start(self) -> None:
        """Open some of the pool's connections before the proxy says it is ready, within
        `WARM_UP_SECONDS`: a cold pool opening connections under the first burst of requests
        would miss the request-path timeout and bypass the cache. A Redis that is down does not
        hold the proxy back: it starts, and fails open, as ever."""
        size = min(WARM_CONNECTIONS, self.client.connection_pool.max_connections)
        try:
            async with asyncio.timeout(WARM_UP_SECONDS):
                await asyncio.gather(*(self.client.ping() for _ in range(size)))
        except FAILURES as e:
            log.warning(
                "redis not reachable at start-up (%s); the cache is bypassed until it is",
                errors.describe(e),
            )

    async def close(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()

    async def get(self, key: str) -> bytes | None:
        # Without `decode_responses` the client returns bytes; its stubs allow for str as well.
        return cast("bytes | None", await self._call("get", lambda: self.client.get(key)))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values = await self._call("mget", lambda: self.client.mget(keys))
        return cast("list[bytes | None]", values)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call("set", lambda: self.client.set(key, value, px=_milliseconds(ttl)))

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        if not items:
            return
        await self._call("set_many", lambda: self._pipelined_set(items, _milliseconds(ttl)))

    async def invalidate(self, selection: keyspace.Selection) -> int:
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT_SECONDS):
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
            async with asyncio.timeout(self.timeout):
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
        pool = self.client.connection_pool
        timeout = f"{self.timeout:g}s"
        return f"<RedisCache prefix={self.prefix!r} timeout={timeout} {pool!r} {self.circuit!r}>"


def _milliseconds(ttl: float) -> int:
    return max(1, round(ttl * 1000))
