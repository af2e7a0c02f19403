"""The cache abstraction and its backends: memory (LRU), Redis, and tiered (memory before Redis).

Values are opaque bytes with a TTL given per write, so one backend holds every kind of data
(chat, completions, embeddings, MCP tool lists and results, each with its own TTL from
`cache.ttlSeconds`). Keys follow `cachekeys.layout`. The LLM layers (`responses.py`,
`vectors.py`) prefix each value with a small header (`pack`/`unpack`): when it was stored, for
`Age`, and flags.

A backend that cannot answer raises `UnavailableError`; callers then bypass the cache for that
request (fail-open). Only `rediscache.RedisCache` ever does; its circuit breaker and timeouts
keep a dead Redis from slowing requests down. The memory backend is driven from the event loop's
one thread and never awaits inside an operation, so its operations are atomic without locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from sluice.api import CacheConfig
from sluice.proxy import cachekeys, memory, metrics

SWEEP_SECONDS = 1.0
_HEADER = struct.Struct("<dB")

HAS_USAGE = 1
"""Header flag: the stored answer carries `usage` (see `replay.py`)."""


class UnavailableError(Exception):
    """The backend cannot answer now (down, slow, or its circuit is open): bypass the cache."""


class Cache(Protocol):
    """What every backend offers; `ttl` is in seconds."""

    name: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def set(self, key: str, value: bytes, ttl: float) -> None: ...
    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None: ...
    async def delete(self, key: str) -> bool: ...
    async def invalidate(self, scope: cachekeys.Scope) -> int:
        """Delete every entry in `scope`; returns how many went."""
        ...


def pack(stored_at: float, flags: int, body: bytes) -> bytes:
    """A value with its header: wall-clock time stored (for `Age`) and flags."""
    return _HEADER.pack(stored_at, flags) + body


def unpack(value: bytes) -> tuple[float, int, bytes]:
    """(stored_at, flags, body) of a value written by `pack`."""
    stored_at, flags = _HEADER.unpack_from(value)
    return stored_at, flags, value[_HEADER.size :]


class MemoryCache:
    """`memory.MemoryStore` on the event loop, with a periodic expiry sweep and its metrics."""

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        prefix: str,
        *,
        name: str = "memory",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.prefix = prefix
        self.store = memory.MemoryStore(max_entries, max_bytes)
        self.clock = clock
        self._exported: dict[str, int] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep_forever(), name=f"sluice-{self.name}-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def get(self, key: str) -> bytes | None:
        return self.store.get(key, self.clock())

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self.clock()
        return [self.store.get(key, now) for key in keys]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        now = self.clock()
        self.store.put(key, value, now + ttl, now)

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        now = self.clock()
        for key, value in items:
            self.store.put(key, value, now + ttl, now)

    async def delete(self, key: str) -> bool:
        return self.store.delete(key)

    async def invalidate(self, scope: cachekeys.Scope) -> int:
        deleted = self.store.delete_where(lambda key: scope.matches(self.prefix, key))
        self.export()
        return deleted

    def sweep(self) -> None:
        self.store.sweep(self.clock())
        self.export()

    def export(self) -> None:
        """Bring the gauges and eviction counters up to date with the store."""
        metrics.cache_entries.labels(self.name).set(len(self.store))
        metrics.cache_bytes.labels(self.name).set(self.store.bytes)
        for reason, total in self.store.evictions.items():
            new = total - self._exported.get(reason, 0)
            if new:
                metrics.cache_evictions.labels(self.name, reason).inc(new)
                self._exported[reason] = total

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self.sweep()

    def __repr__(self) -> str:
        return f"<MemoryCache {self.name} {self.store!r}>"


class TieredCache:
    """Memory in front of Redis: reads try memory first and keep what Redis gave for `local_ttl`.

    Writes go to both. Another replica's invalidation reaches this one's memory only when its
    local copies expire, which is why `localTtlSeconds` is short; for the same reason an entry
    read from Redis may outlive its own TTL here by at most `local_ttl`.
    """

    def __init__(self, local: MemoryCache, remote: Cache, local_ttl: float) -> None:
        self.name = "tiered"
        self.local = local
        self.remote = remote
        self.local_ttl = local_ttl

    async def start(self) -> None:
        await self.local.start()
        await self.remote.start()

    async def close(self) -> None:
        await self.local.close()
        await self.remote.close()

    async def get(self, key: str) -> bytes | None:
        value = await self.local.get(key)
        if value is None:
            value = await self.remote.get(key)
            if value is not None:
                await self.local.set(key, value, self.local_ttl)
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = await self.local.get_many(keys)
        missing = [i for i, value in enumerate(values) if value is None]
        if not missing:
            return values
        fetched = await self.remote.get_many([keys[i] for i in missing])
        found = []
        for i, value in zip(missing, fetched, strict=True):
            if value is not None:
                values[i] = value
                found.append((keys[i], value))
        await self.local.set_many(found, self.local_ttl)
        return values

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self.local.set(key, value, min(ttl, self.local_ttl))
        await self.remote.set(key, value, ttl)

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        await self.local.set_many(items, min(ttl, self.local_ttl))
        await self.remote.set_many(items, ttl)

    async def delete(self, key: str) -> bool:
        local = await self.local.delete(key)
        return await self.remote.delete(key) or local

    async def invalidate(self, scope: cachekeys.Scope) -> int:
        """Redis's count: the local entries are copies of Redis's."""
        await self.local.invalidate(scope)
        return await self.remote.invalidate(scope)

    def __repr__(self) -> str:
        return f"<TieredCache local_ttl={self.local_ttl:g}s {self.local!r} {self.remote!r}>"


def build(config: CacheConfig, environ: Mapping[str, str]) -> Cache | None:
    """The backend the config names, not yet started; None when caching is off."""
    if config.mode == "off":
        return None
    prefix = config.redis.key_prefix
    local = MemoryCache(config.max_entries, config.max_bytes, prefix)
    if config.backend == "memory":
        return local
    # Imported here: a proxy without Redis does not pay for importing redis.asyncio.
    from sluice.proxy import rediscache

    remote = rediscache.RedisCache.from_config(config.redis, environ)
    if config.backend == "redis":
        return remote
    return TieredCache(local, remote, config.local_ttl_seconds)
