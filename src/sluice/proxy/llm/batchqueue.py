"""Which waiting items go out together, and when: the pure decisions of batching.

`BatchQueue.add(..., now) -> Batch | None`, `due(now) -> Batch | None` and `deadline()` never
read a clock or touch the loop, so tests drive them with a fake clock; `batching.Batcher` is the
asyncio driver around them. Items with different keys never share a batch; what a batch means
(one coalesced upstream call) is `dispatching.py`'s business.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Hashable
from typing import Generic, Literal, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
Reason = Literal["size", "timeout", "shutdown"]


class QueueFullError(Exception):
    """`max_queue` items are already waiting."""


class QueueClosedError(Exception):
    """The queue is closed: it flushes what it has and takes nothing new."""


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """When a batch is sent and how many may be out at once."""

    max_size: int
    """A batch holds at most this much size (one item larger than this goes alone)."""
    max_wait: float
    """Seconds the oldest waiting item may wait for batch-mates."""
    max_concurrent: int
    """Batches in flight at once."""
    max_queue: int
    """Items waiting (not in flight) beyond which `add` raises `QueueFullError`."""
    max_cost: float = math.inf
    """A second budget per batch, such as estimated tokens."""


@dataclasses.dataclass(slots=True)
class Entry(Generic[T]):
    item: T
    size: int
    cost: float
    enqueued: float


@dataclasses.dataclass(slots=True)
class Batch(Generic[K, T]):
    key: K
    entries: list[Entry[T]]
    reason: Reason

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)


class _Lane(Generic[T]):
    """The waiting items of one key, oldest first."""

    __slots__ = ("cost", "entries", "size")

    def __init__(self) -> None:
        self.entries: collections.deque[Entry[T]] = collections.deque()
        self.size = 0
        self.cost = 0.0


class BatchQueue(Generic[K, T]):
    """Which items go out together, and when; pure (every time is passed in)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.lanes: dict[K, _Lane[T]] = {}
        self.pending = 0
        self.in_flight = 0
        self.closed = False

    def add(self, key: K, item: T, size: int, cost: float, now: float) -> Batch[K, T] | None:
        """Queue an item; return a batch when this item filled its lane and a slot is free."""
        if self.closed:
            raise QueueClosedError
        if self.pending >= self.limits.max_queue:
            raise QueueFullError
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = _Lane()
        lane.entries.append(Entry(item, size, cost, now))
        lane.size += size
        lane.cost += cost
        self.pending += 1
        if self._full(lane) and self.in_flight < self.limits.max_concurrent:
            return self._take(key, lane, "size")
        return None

    def due(self, now: float) -> Batch[K, T] | None:
        """The next batch to send now (full, overdue, or flushed by `close`), if a slot is free.

        Among ready lanes the one with the oldest item goes first, so no key starves.
        """
        if self.in_flight >= self.limits.max_concurrent:
            return None
        chosen: tuple[K, _Lane[T]] | None = None
        for key, lane in self.lanes.items():
            head = lane.entries[0].enqueued
            ready = self.closed or self._full(lane) or now - head >= self.limits.max_wait
            if ready and (chosen is None or head < chosen[1].entries[0].enqueued):
                chosen = (key, lane)
        if chosen is None:
            return None
        key, lane = chosen
        reason: Reason = "size" if self._full(lane) else "shutdown" if self.closed else "timeout"
        return self._take(key, lane, reason)

    def deadline(self) -> float | None:
        """When `due` will next return a batch, if nothing else happens; None: not by itself."""
        if not self.lanes or self.in_flight >= self.limits.max_concurrent:
            return None
        oldest = min(lane.entries[0].enqueued for lane in self.lanes.values())
        return oldest if self.closed else oldest + self.limits.max_wait

    def remove(self, key: K, item: T) -> bool:
        """Take a waiting item out (its caller left); False when it is not waiting (any more)."""
        lane = self.lanes.get(key)
        if lane is None:
            return False
        for entry in lane.entries:
            if entry.item is item:
                lane.entries.remove(entry)
                lane.size -= entry.size
                lane.cost -= entry.cost
                self.pending -= 1
                if not lane.entries:
                    del self.lanes[key]
                return True
        return False

    def done(self, batch: Batch[K, T]) -> None:
        """A batch came back; its slot is free."""
        self.in_flight -= 1

    def close(self) -> None:
        """Take nothing new; `due` now returns every waiting item, slots permitting."""
        self.closed = True

    def clear(self) -> list[Entry[T]]:
        """Remove and return every waiting item (for a driver that cannot go on)."""
        entries = [e for lane in self.lanes.values() for e in lane.entries]
        self.lanes.clear()
        self.pending = 0
        return entries

    def oldest(self) -> float | None:
        if not self.lanes:
            return None
        return min(lane.entries[0].enqueued for lane in self.lanes.values())

    def _full(self, lane: _Lane[T]) -> bool:
        return lane.size >= self.limits.max_size or lane.cost >= self.limits.max_cost

    def _take(self, key: K, lane: _Lane[T], reason: Reason) -> Batch[K, T]:
        first = lane.entries.popleft()
        taken, size, cost = [first], first.size, first.cost
        while lane.entries:
            nxt = lane.entries[0]
            if size + nxt.size > self.limits.max_size or cost + nxt.cost > self.limits.max_cost:
                break
            taken.append(lane.entries.popleft())
            size += nxt.size
            cost += nxt.cost
        lane.size -= size
        lane.cost -= cost
        if not lane.entries:
            del self.lanes[key]
        self.pending -= len(taken)
        self.in_flight += 1
        return Batch(key, taken, reason)

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return (
            f"<BatchQueue pending={self.pending} lanes={len(self.lanes)}"
            f" in_flight={self.in_flight}/{self.limits.max_concurrent}{state}>"
        )
