"""Gathering work into batches: the decisions (`BatchQueue`), their asyncio driver (`Batcher`),
and the bound on calls that are never batched (`Limiter`).

`BatchQueue` is pure: `add(..., now) -> Batch | None`, `due(now) -> Batch | None` and
`deadline()` never read a clock or touch the loop, so tests drive it with a fake clock.
`Batcher` wraps it: one task owns the timer, each batch runs in its own task, and every caller
of `submit()` gets its own result or the batch's error. What a batch means (one coalesced
upstream call) is `dispatching.py`'s business; this module only knows keys, sizes, costs and waits.
Items with different keys never share a batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Generic, Literal, TypeVar

from sluice.proxy import asgi, errors, metrics

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")
Reason = Literal["size", "timeout", "shutdown"]

RETRY_AFTER_SECONDS = 1
"""What a caller refused for a full queue is told to wait: queues drain in batch times (ms)."""


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


Process = Callable[[K, list[T]], Awaitable[list[R]]]
"""Turns one batch's items into one result per item, in order; raising fails them all."""


@dataclasses.dataclass(slots=True)
class _Waiter(Generic[T, R]):
    item: T
    future: asyncio.Future[R]

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Batcher(Generic[K, T, R]):
    """`submit(key, item) -> result`, with items of one key processed together in batches."""

    def __init__(
        self,
        name: str,
        limits: Limits,
        process: Process[K, T, R],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.queue: BatchQueue[K, _Waiter[T, R]] = BatchQueue(limits)
        self.process = process
        self.clock = clock
        self._wake = asyncio.Event()
        self._sleeping_until: float | None = None
        self._timer: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._depth = metrics.batch_queue_depth.labels(name)
        self._in_flight = metrics.batches_in_flight.labels(name)
        self._sizes = metrics.batch_size.labels(name)
        self._waits = metrics.batch_wait.labels(name)
        self._rejected = metrics.batch_rejected.labels(name)

    @property
    def closed(self) -> bool:
        return self.queue.closed

    def start(self) -> None:
        """Start the timer task; must run on the serving event loop."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(
                self._run(), name=f"batcher-{self.name}"
            )

    async def submit(self, key: K, item: T, size: int = 1, cost: float = 0.0) -> R:
        """The item's result, once its batch has been processed; 429 when the queue is full."""
        if self._timer is None:
            raise RuntimeError(f"{self!r} was not started")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            batch = self.queue.add(key, _Waiter(item, future), size, cost, self.clock())
        except QueueFullError:
            self._rejected.inc()
            raise errors.overloaded(RETRY_AFTER_SECONDS) from None
        except QueueClosedError:
            raise errors.shutting_down() from None
        self._depth.inc()
        if batch is not None:
            self._launch(batch)
        elif self._sleeping_until is None and self.queue.deadline() is not None:
            self._wake.set()  # the timer sleeps without a deadline; this item brings one
        return await future

    def close(self) -> None:
        """Take nothing new and send everything waiting now, without waiting for batch-mates."""
        self.queue.close()
        self._wake.set()

    async def stop(self) -> None:
        """Close, then return when every waiting and in-flight batch has been answered."""
        self.close()
        if self._timer is not None:
            await self._timer
        while self._running:
            await asyncio.gather(*self._running)

    async def _run(self) -> None:
        try:
            while await self._tick():
                pass
        except Exception:
            # Never expected; the callers still waiting must hear about it rather than hang.
            log.exception("%r: timer failed; failing what was waiting", self)
            for entry in self.queue.clear():
                entry.item.fail(errors.shutting_down())

    async def _tick(self) -> bool:
        """Send what is due, then sleep until the next deadline or a wake-up; False: finished."""
        now = self.clock()
        while (batch := self.queue.due(now)) is not None:
            self._launch(batch)
        if self.queue.closed and not self.queue.pending:
            return False
        self._sleeping_until = self.queue.deadline()
        self._wake.clear()
        delay = None if self._sleeping_until is None else max(0.0, self._sleeping_until - now)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
        return True

    def _launch(self, batch: Batch[K, _Waiter[T, R]]) -> None:
        now = self.clock()
        self._depth.dec(len(batch.entries))
        self._in_flight.inc()
        self._sizes.observe(batch.size)
        metrics.batch_flushes.labels(self.name, batch.reason).inc()
        for entry in batch.entries:
            self._waits.observe(now - entry.enqueued)
        task = asyncio.get_running_loop().create_task(self._answer(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _answer(self, batch: Batch[K, _Waiter[T, R]]) -> None:
        waiters = [e.item for e in batch.entries]
        try:
            results = await self.process(batch.key, [w.item for w in waiters])
            if len(results) != len(waiters):
                raise RuntimeError(f"{len(results)} results for {len(waiters)} items")
            for waiter, result in zip(waiters, results, strict=True):
                if not waiter.future.done():
                    waiter.future.set_result(result)
        except Exception as e:
            for waiter in waiters:
                waiter.fail(e)
        finally:
            for waiter in waiters:  # only a cancelled batch leaves any: answer them anyway
                waiter.fail(errors.shutting_down())
            self.queue.done(batch)
            self._in_flight.dec()
            if self.queue.pending:
                self._wake.set()

    def __repr__(self) -> str:
        limits, queue = self.queue.limits, self.queue
        oldest = queue.oldest()
        waited = 0.0 if oldest is None else (self.clock() - oldest) * 1000
        state = " closed" if queue.closed else ""
        return (
            f"<Batcher {self.name} pending={queue.pending}/{limits.max_size}"
            f" oldest={waited:.0f}ms in_flight={queue.in_flight}/{limits.max_concurrent}{state}>"
        )


class Limiter:
    """At most `limit` calls at once and `max_queue` waiting for a turn; beyond that, 429.

    For calls that are never batched (streams, chat) so they still respect a concurrency bound.
    """

    def __init__(self, name: str, limit: int, max_queue: int) -> None:
        self.name = name
        self.limit = limit
        self.max_queue = max_queue
        self.waiting = 0
        self.busy = 0
        self._slots = asyncio.Semaphore(limit)
        self._depth = metrics.batch_queue_depth.labels(name)
        self._in_flight = metrics.batches_in_flight.labels(name)
        self._rejected = metrics.batch_rejected.labels(name)

    async def acquire(self) -> None:
        if self._slots.locked():
            if self.waiting >= self.max_queue:
                self._rejected.inc()
                raise errors.overloaded(RETRY_AFTER_SECONDS)
            self.waiting += 1
            self._depth.inc()
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
                self._depth.dec()
        else:
            await self._slots.acquire()
        self.busy += 1
        self._in_flight.inc()

    def release(self) -> None:
        self._slots.release()
        self.busy -= 1
        self._in_flight.dec()

    def __repr__(self) -> str:
        return f"<Limiter {self.name} in_flight={self.busy}/{self.limit} waiting={self.waiting}>"


class HeldStream:
    """A streamed body that holds a `Limiter` slot until it ends or is closed."""

    def __init__(self, stream: AsyncIterator[bytes], release: Callable[[], Any]) -> None:
        self.stream = stream
        self._release: Callable[[], Any] | None = release

    def __aiter__(self) -> HeldStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self.stream)
        except StopAsyncIteration:
            self._let_go()
            raise

    async def aclose(self) -> None:
        self._let_go()
        await asgi.aclose(self.stream)

    def _let_go(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None
