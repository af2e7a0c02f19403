"""The `memory` backend: `lru.LRUStore` on the event loop, with a periodic expiry sweep and its
metrics.

Driven from the event loop's one thread and never awaiting inside an operation, so its
operations are atomic without locks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from sluice.proxy import metrics, tasks
from sluice.proxy.cache import keyspace, lru

SWEEP_SECONDS = 1.0
_STARTED: dict[str, list[MemoryCache]] = {}
"""The started caches by name, which `sluice_cache_entries` and `_bytes` count when scraped: a proxy
with an `llm` and an `mcp` section has two, and a gauge set by each would show the last one."""


class MemoryCache:
    """`lru.LRUStore` on the event loop, with a periodic expiry sweep and its metrics."""

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
        self.store = lru.LRUStore(max_entries, max_bytes)
        self.clock = clock
        self._exported: dict[str, int] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep_forever(), name=f"sluice-{self.name}-sweep")
        name = self.name
        _STARTED.setdefault(name, []).append(self)
        metrics.cache_entries.labels(name).set_function(
            lambda: sum(len(cache.store) for cache in _STARTED.get(name, ()))
        )
        metrics.cache_bytes.labels(name).set_function(
            lambda: sum(cache.store.bytes for cache in _STARTED.get(name, ()))
        )

    async def close(self) -> None:
        await tasks.cancel(self._sweeper)
        self._sweeper = None
        started = _STARTED.get(self.name, [])
        if self in started:
            started.remove(self)

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

    async def invalidate(self, selection: keyspace.Selection) -> int:
        deleted = self.store.delete_where(lambda key: selection.matches(self.prefix, key))
        self.export()
        return deleted

    def sweep(self) -> None:
        self.store.sweep(self.clock())
        self.export()

    def export(self) -> None:
        """Bring the eviction counters up to date with the store (the entries and bytes gauges
        are read when scraped)."""
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
