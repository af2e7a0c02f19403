"""The `tiered` backend: memory in front of Redis, so hot entries cost no round trip and every
replica still shares what Redis holds."""

from __future__ import annotations

from collections.abc import Sequence

from sluice.proxy.cache import keyspace, memory, store


class TieredCache:
    """Memory in front of Redis: reads try memory first and keep what Redis gave for `local_ttl`.

    Writes go to both. Another replica's invalidation reaches this one's memory only when its
    local copies expire, which is why `localTtlSeconds` is short; for the same reason an entry
    read from Redis may outlive its own TTL here by at most `local_ttl`.

    A Redis that is down or slow makes this a memory cache, not a bypass: its read is a miss, so
    the answer fetched for it is written to memory (the write to Redis fails, and the caller
    ignores that as for any backend). Replicas stop sharing until Redis is back; each still
    saves its own repeats.
    """

    def __init__(self, local: memory.MemoryCache, remote: store.Cache, local_ttl: float) -> None:
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
            try:
                value = await self.remote.get(key)
            except store.UnavailableError:  # counted and logged by the remote
                return None
            if value is not None:
                await self.local.set(key, value, self.local_ttl)
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = await self.local.get_many(keys)
        missing = [i for i, value in enumerate(values) if value is None]
        if not missing:
            return values
        try:
            fetched = await self.remote.get_many([keys[i] for i in missing])
        except store.UnavailableError:  # counted and logged by the remote
            return values
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

    async def invalidate(self, selection: keyspace.Selection) -> int:
        """Redis's count: the local entries are copies of Redis's."""
        await self.local.invalidate(selection)
        return await self.remote.invalidate(selection)

    def __repr__(self) -> str:
        return f"<TieredCache local_ttl={self.local_ttl:g}s {self.local!r} {self.remote!r}>"
