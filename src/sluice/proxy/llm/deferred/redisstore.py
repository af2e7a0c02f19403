"""`RedisJobStore`: the deferred state in Redis, shared by replicas and kept across restarts.

Keys, under the cache's `keyPrefix` and one hash tag (`{deferred}`, so that on Redis Cluster
the multi-key commands below stay in one slot):

    item:<id>       the item's JSON, until its result's time is up
    group:<key>     a group's JSON; `groups` the set of group keys with waiting items
    waiting:<key>   sorted set of a group's waiting item ids, by arrival
    open            sorted set of unanswered item ids, by deadline (`ZREM` is the claim)
    result:<id>     the packed result, for `resultTtlSeconds`
    jobs            hash of submitted Batch API jobs, by batch id

The client is built as the cache's is (`cache.redisclients.build`: one node, Sentinel or Cluster)
and, as the cache does, this store keeps at most `poolSize` commands in flight (the cluster and
Sentinel pools fail rather than wait when full) and counts the cluster's errors as failures.
Unlike the cache, this store does not fail open: an item that cannot be kept is refused (503)
rather than silently lost, and the worker retries on its next tick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TypeVar, cast

from sluice.api import RedisConfig
from sluice.proxy.cache import rediscache, redisclients
from sluice.proxy.http import errors
from sluice.proxy.llm.deferred import records

T = TypeVar("T")
TIMEOUT_SECONDS = 5.0
GROUP_TTL_SECONDS = 2 * 86400


class RedisJobStore:
    """A `jobstore.JobStore` in Redis."""

    name = "redis"
    shared = True

    def __init__(
        self,
        client: redisclients.Client,
        prefix: str,
        result_ttl: float,
        *,
        in_flight: int = 32,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix + "{deferred}:"
        self.result_ttl = result_ttl
        self.clock = clock
        self._in_flight = asyncio.Semaphore(in_flight)

    @classmethod
    def from_config(
        cls, config: RedisConfig, environ: Mapping[str, str], result_ttl: float
    ) -> RedisJobStore:
        # The cache's request-path deadline (tens of milliseconds, waiting for a pooled
        # connection included) would refuse a burst of deferred requests; these are kept
        # for hours, so they get the longer one.
        patient = config.model_copy(update={"timeout_milliseconds": int(TIMEOUT_SECONDS * 1000)})
        client = redisclients.build(patient, environ)
        return cls(client, config.key_prefix, result_ttl, in_flight=config.pool_size)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await redisclients.close(self.client)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS), self._in_flight:
                return await command()
        except rediscache.FAILURES as e:
            raise errors.ProxyError(
                503,
                f"The deferred-job store (Redis) cannot be used: {errors.describe(e)}",
                type="server_error",
                code="deferred_store_unavailable",
            ) from None

    async def add(self, item: records.Item, group: records.Group, *, waiting: bool) -> None:
        keep = max(1.0, item.deadline - self.clock()) + self.result_ttl
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.key("item", item.id), item.dumps(), px=int(keep * 1000))
            pipe.set(self.key("group", item.group), group.dumps(), ex=GROUP_TTL_SECONDS)
            pipe.zadd(self.key("open"), {item.id: item.deadline})
            if waiting:
                pipe.sadd(self.key("groups"), item.group)
                pipe.zadd(self.key("waiting", item.group), {item.id: item.enqueued_at})
            await self._call(pipe.execute)

    async def item(self, item_id: str) -> records.Item | None:
        raw = await self._call(lambda: self.client.get(self.key("item", item_id)))
        return None if raw is None else records.Item.loads(cast("bytes", raw))

    async def group(self, key: str) -> records.Group | None:
        raw = await self._call(lambda: self.client.get(self.key("group", key)))
        return None if raw is None else records.Group.loads(cast("bytes", raw))

    async def groups(self) -> list[str]:
        members = await self._call(lambda: self.client.smembers(self.key("groups")))
        return sorted(m.decode() for m in cast("set[bytes]", members))

    async def waiting(self, group: str) -> tuple[int, float | None]:
        key = self.key("waiting", group)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
            count, oldest = await self._call(pipe.execute)
        return int(count), (float(oldest[0][1]) if oldest else None)

    async def take(self, group: str, count: int) -> list[records.Item]:
        popped = await self._call(lambda: self.client.zpopmin(self.key("waiting", group), count))
        ids = [member.decode() for member, _ in cast("list[tuple[bytes, float]]", popped)]
        if not ids:
            return []
        raws = await self._call(lambda: self.client.mget([self.key("item", i) for i in ids]))
        return [records.Item.loads(raw) for raw in cast("list[bytes | None]", raws) if raw]

    async def forget(self, group: str) -> None:
        """Take `group` out of `groups`, then put it back if an item came meanwhile: `add` and
        `requeue` write both in one transaction, so none is left waiting in an unlisted group."""
        await self._call(lambda: self.client.srem(self.key("groups"), group))
        if await self._call(lambda: self.client.zcard(self.key("waiting", group))):
            await self._call(lambda: self.client.sadd(self.key("groups"), group))

    async def requeue(self, items: Iterable[records.Item]) -> None:
        listed = list(items)
        if not listed:
            return
        scores = await self._call(
            lambda: self.client.zmscore(self.key("open"), [i.id for i in listed])
        )
        async with self.client.pipeline(transaction=True) as pipe:
            for item, score in zip(listed, scores, strict=True):
                if score is not None:  # answered meanwhile: nothing to queue
                    pipe.sadd(self.key("groups"), item.group)
                    pipe.zadd(self.key("waiting", item.group), {item.id: item.enqueued_at})
            await self._call(pipe.execute)

    async def due(self, before: float) -> list[str]:
        ids = await self._call(lambda: self.client.zrangebyscore(self.key("open"), "-inf", before))
        return [i.decode() for i in cast("list[bytes]", ids)]

    async def claim(self, item_id: str) -> bool:
        removed = await self._call(lambda: self.client.zrem(self.key("open"), item_id))
        if removed:
            item = await self.item(item_id)
            if item is not None:
                await self._call(lambda: self.client.zrem(self.key("waiting", item.group), item_id))
        return bool(removed)

    async def still_open(self, item_ids: list[str]) -> list[str]:
        if not item_ids:
            return []
        scores = await self._call(lambda: self.client.zmscore(self.key("open"), item_ids))
        return [i for i, score in zip(item_ids, scores, strict=True) if score is not None]

    async def finish(self, item_id: str, result: records.Result) -> None:
        ttl = int(self.result_ttl * 1000)
        await self._call(
            lambda: self.client.set(self.key("result", item_id), result.pack(), px=ttl)
        )

    async def result(self, item_id: str) -> records.Result | None:
        raw = await self._call(lambda: self.client.get(self.key("result", item_id)))
        return None if raw is None else records.Result.unpack(cast("bytes", raw))

    async def submitted(self, job: records.Job) -> None:
        await self._call(lambda: self.client.hset(self.key("jobs"), job.id, job.dumps()))

    async def jobs(self) -> list[records.Job]:
        found = await self._call(lambda: self.client.hgetall(self.key("jobs")))
        return [records.Job.loads(raw) for raw in cast("dict[bytes, bytes]", found).values()]

    async def ended(self, job_id: str) -> None:
        await self._call(lambda: self.client.hdel(self.key("jobs"), job_id))

    def __repr__(self) -> str:
        return f"<RedisJobStore prefix={self.prefix!r}>"
