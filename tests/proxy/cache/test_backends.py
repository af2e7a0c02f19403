"""The cache backends without a network: memory, tiered over a fake remote, Redis's fail-open."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
import redis.exceptions

from sluice.api import CacheConfig
from sluice.proxy.cache import backends, breaker, keyspace, memory, rediscache, store, tiered


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRemote:
    """A `store.Cache` in a dict that can be switched off."""

    name = "fake"

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.down = False
        self.reads = 0

    def check(self) -> None:
        if self.down:
            raise store.UnavailableError("down")

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def get(self, key: str) -> bytes | None:
        self.check()
        self.reads += 1
        return self.data.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.check()
        self.reads += 1
        return [self.data.get(k) for k in keys]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.check()
        self.data[key] = value

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        self.check()
        self.data.update(items)

    async def delete(self, key: str) -> bool:
        self.check()
        return self.data.pop(key, None) is not None

    async def invalidate(self, scope: keyspace.Selection) -> int:
        self.check()
        doomed = [k for k in self.data if scope.matches("p:", k)]
        for k in doomed:
            del self.data[k]
        return len(doomed)


def test_pack_and_unpack_keep_time_flags_and_body() -> None:
    value = store.pack(1234.5, store.HAS_USAGE, b'{"a":1}')
    assert store.unpack(value) == (1234.5, store.HAS_USAGE, b'{"a":1}')


async def test_memory_cache_expires_by_its_clock_and_counts_in_metrics() -> None:
    clock = Clock()
    cache = memory.MemoryCache(10, 10_000, "p:", clock=clock)
    await cache.set("p:a", b"1", ttl=5)
    await cache.set_many([("p:b", b"2"), ("p:c", b"3")], ttl=50)
    assert await cache.get_many(["p:a", "p:b", "p:x"]) == [b"1", b"2", None]
    clock.now += 6
    assert await cache.get("p:a") is None
    cache.sweep()
    assert len(cache.store) == 2
    assert "entries=2/10" in repr(cache)


async def test_tiered_reads_through_to_the_remote_once_and_keeps_a_local_copy() -> None:
    clock = Clock()
    remote = FakeRemote()
    layered = tiered.TieredCache(memory.MemoryCache(10, 10_000, "p:", clock=clock), remote, 5)
    remote.data["p:k"] = b"v"
    assert await layered.get("p:k") == b"v"
    assert await layered.get("p:k") == b"v"
    assert remote.reads == 1
    clock.now += 6  # the local copy lives `local_ttl` only
    assert await layered.get("p:k") == b"v"
    assert remote.reads == 2


async def test_tiered_get_many_asks_the_remote_only_for_local_misses() -> None:
    remote = FakeRemote()
    layered = tiered.TieredCache(memory.MemoryCache(10, 10_000, "p:"), remote, 5)
    await layered.set("p:a", b"1", 60)
    remote.data["p:b"] = b"2"
    assert await layered.get_many(["p:a", "p:b", "p:c"]) == [b"1", b"2", None]
    assert await layered.get_many(["p:a", "p:b"]) == [b"1", b"2"]
    assert remote.reads == 1


async def test_tiered_is_a_memory_cache_while_the_remote_is_down() -> None:
    remote = FakeRemote()
    layered = tiered.TieredCache(memory.MemoryCache(10, 10_000, "p:"), remote, 5)
    remote.down = True
    assert await layered.get("p:a") is None  # a miss, so its answer is stored, not a bypass
    assert await layered.get_many(["p:a", "p:b"]) == [None, None]
    with pytest.raises(store.UnavailableError):
        await layered.set("p:a", b"1", 60)
    await layered.local.set("p:b", b"2", 5)
    assert await layered.get("p:a") == b"1"
    assert await layered.get_many(["p:a", "p:b", "p:c"]) == [b"1", b"2", None]


async def test_tiered_invalidation_clears_both_tiers_and_reports_the_remote_count() -> None:
    remote = FakeRemote()
    layered = tiered.TieredCache(memory.MemoryCache(10, 10_000, "p:"), remote, 5)
    key = keyspace.layout("p:", "chat", "alice", "m", "0" * 32)
    await layered.set(key, b"1", 60)
    assert await layered.invalidate(keyspace.Selection(tenants=("alice",))) == 1
    assert await layered.local.get(key) is None


def test_build_picks_the_configured_backend() -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1/0"}

    def config(**fields: Any) -> CacheConfig:
        return CacheConfig.model_validate(fields)

    assert isinstance(backends.build(config(), env), memory.MemoryCache)
    assert isinstance(backends.build(config(backend="redis"), env), rediscache.RedisCache)
    assert isinstance(backends.build(config(backend="tiered"), env), tiered.TieredCache)


class FakeRedis:
    """Stands in for `redis.asyncio.Redis`: answers `get`, or fails while `error` is set."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.calls = 0

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return b"v"


async def test_redis_failures_raise_unavailable_and_open_the_circuit() -> None:
    clock = Clock()
    client = FakeRedis()
    circuit = breaker.CircuitBreaker(threshold=2, cooldown=1.0)
    cache = rediscache.RedisCache(client, "p:", 0.05, circuit=circuit, clock=clock)  # type: ignore[arg-type]
    assert await cache.get("p:k") == b"v"
    client.error = redis.exceptions.ConnectionError("refused")
    for _ in range(5):
        with pytest.raises(store.UnavailableError):
            await cache.get("p:k")
    assert client.calls == 3  # two failures opened the circuit; the rest never reached Redis
    client.error = None
    clock.now += 1.0
    assert await cache.get("p:k") == b"v"  # the probe succeeds and closes the circuit
    assert circuit.state is breaker.State.CLOSED


async def test_a_slow_redis_counts_as_a_failure_after_the_timeout() -> None:
    class Slow(FakeRedis):
        async def get(self, key: str) -> bytes | None:
            await asyncio.sleep(10)
            return None

    cache = rediscache.RedisCache(Slow(), "p:", 0.01)  # type: ignore[arg-type]
    with pytest.raises(store.UnavailableError, match="timed out"):
        await cache.get("p:k")
    assert cache.circuit.failures == 1
