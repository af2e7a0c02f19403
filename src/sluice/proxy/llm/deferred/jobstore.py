"""Where deferred state lives: the `JobStore` protocol, and `MemoryJobStore` for one replica.

The state: items (by id), their groups, each group's waiting items (oldest first), the items
still *open* (unanswered, by deadline), the submitted Batch API jobs, and results. One rule
makes every answer single: whoever takes an item out of the open set (`claim`) answers it, so a
batch result that comes after the deadline fallback answered, or a second replica polling the
same job, changes nothing. `redisstore.RedisJobStore` keeps the same in Redis, so that it
survives a restart and every replica sees it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from sluice.api import LLMConfig, llm
from sluice.proxy.llm.deferred import records


class JobStore(Protocol):
    name: str
    shared: bool
    """Do other replicas (and a restarted process) see this state?"""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def add(self, item: records.Item, group: records.Group, *, waiting: bool) -> None:
        """Keep `item` open; `waiting`: also queue it for its group's next job."""
        ...

    async def item(self, item_id: str) -> records.Item | None: ...
    async def group(self, key: str) -> records.Group | None: ...
    async def groups(self) -> list[str]: ...
    async def waiting(self, group: str) -> tuple[int, float | None]:
        """How many items wait for a job of `group`, and since when the oldest has."""
        ...

    async def take(self, group: str, count: int) -> list[records.Item]:
        """Up to `count` waiting items of `group`, oldest first, no longer waiting."""
        ...

    async def forget(self, group: str) -> None:
        """Stop listing `group` in `groups` if no item waits for it (its record stays)."""
        ...

    async def requeue(self, items: Iterable[records.Item]) -> None:
        """Queue again items that were taken (a submission failed, a job ended without them)."""
        ...

    async def due(self, before: float) -> list[str]:
        """Open items whose deadline is before `before`."""
        ...

    async def claim(self, item_id: str) -> bool:
        """Take the item out of the open set; True for the one caller that did."""
        ...

    async def still_open(self, item_ids: list[str]) -> list[str]: ...
    async def finish(self, item_id: str, result: records.Result) -> None: ...
    async def result(self, item_id: str) -> records.Result | None: ...
    async def submitted(self, job: records.Job) -> None: ...
    async def jobs(self) -> list[records.Job]: ...
    async def ended(self, job_id: str) -> None: ...


class MemoryJobStore:
    """A `JobStore` in this process: lost on restart, invisible to other replicas."""

    name = "memory"
    shared = False

    def __init__(self, result_ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.result_ttl = result_ttl
        self.clock = clock
        self.items: dict[str, records.Item] = {}
        self.group_of: dict[str, records.Group] = {}
        self.queues: dict[str, dict[str, float]] = {}
        self.open: dict[str, float] = {}
        self.results: dict[str, tuple[float, records.Result]] = {}
        self.submitted_jobs: dict[str, records.Job] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def add(self, item: records.Item, group: records.Group, *, waiting: bool) -> None:
        self.items[item.id] = item
        self.group_of.setdefault(item.group, group)
        self.open[item.id] = item.deadline
        if waiting:
            self.queues.setdefault(item.group, {})[item.id] = item.enqueued_at

    async def item(self, item_id: str) -> records.Item | None:
        return self.items.get(item_id)

    async def group(self, key: str) -> records.Group | None:
        return self.group_of.get(key)

    async def groups(self) -> list[str]:
        return list(self.queues)

    async def waiting(self, group: str) -> tuple[int, float | None]:
        queue = self.queues.get(group, {})
        return len(queue), min(queue.values(), default=None)

    async def take(self, group: str, count: int) -> list[records.Item]:
        queue = self.queues.get(group, {})
        ids = sorted(queue, key=queue.__getitem__)[:count]
        for item_id in ids:
            del queue[item_id]
        return [self.items[i] for i in ids if i in self.items]

    async def forget(self, group: str) -> None:
        if not self.queues.get(group):
            self.queues.pop(group, None)

    async def requeue(self, items: Iterable[records.Item]) -> None:
        for item in items:
            if item.id in self.open:
                self.queues.setdefault(item.group, {})[item.id] = item.enqueued_at

    async def due(self, before: float) -> list[str]:
        self._expire()
        return [i for i, deadline in self.open.items() if deadline <= before]

    async def claim(self, item_id: str) -> bool:
        item = self.items.get(item_id)
        if item is not None:
            self.queues.get(item.group, {}).pop(item_id, None)
        return self.open.pop(item_id, None) is not None

    async def still_open(self, item_ids: list[str]) -> list[str]:
        return [i for i in item_ids if i in self.open]

    async def finish(self, item_id: str, result: records.Result) -> None:
        self.results[item_id] = (self.clock() + self.result_ttl, result)

    async def result(self, item_id: str) -> records.Result | None:
        found = self.results.get(item_id)
        return found[1] if found is not None and found[0] > self.clock() else None

    async def submitted(self, job: records.Job) -> None:
        self.submitted_jobs[job.id] = job

    async def jobs(self) -> list[records.Job]:
        return list(self.submitted_jobs.values())

    async def ended(self, job_id: str) -> None:
        self.submitted_jobs.pop(job_id, None)

    def _expire(self) -> None:
        """Forget results past their time, and the items they answered. One TTL for all, so
        they expire in the order they were kept: each tick reads only the expired ones."""
        now = self.clock()
        expired = []
        for item_id, (until, _) in self.results.items():
            if until > now:
                break
            expired.append(item_id)
        for item_id in expired:
            del self.results[item_id]
            self.items.pop(item_id, None)

    def __repr__(self) -> str:
        waiting = sum(map(len, self.queues.values()))
        return (
            f"<MemoryJobStore open={len(self.open)} waiting={waiting} "
            f"jobs={len(self.submitted_jobs)} results={len(self.results)}>"
        )


def build(config: LLMConfig, environ: Mapping[str, str]) -> JobStore:
    """The store `llm.deferred.store` names (`api.llm.deferred_store`: the operator's rule too)."""
    ttl = config.deferred.result_ttl_seconds
    if llm.deferred_store(config.deferred, config.cache) == "memory":
        return MemoryJobStore(ttl)
    # Imported here: a proxy without Redis does not pay for importing redis.asyncio.
    from sluice.proxy.llm.deferred import redisstore

    return redisstore.RedisJobStore.from_config(config.cache.redis, environ, ttl)
