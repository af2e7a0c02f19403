"""Gathering work into batches on the event loop (`Batcher`, driving `batchqueue.BatchQueue`),
and the bound on calls that are never batched (`Limiter`, `HeldStream`).

`Batcher`: one task owns the timer, each batch runs in its own task, and every caller of
`submit()` gets its own result or the batch's error. A caller that leaves while its item waits
takes the item out; when every caller of a batch in flight has left, the batch is cancelled (its
upstream call closed). This module only knows keys, sizes, costs and waits; what a batch means
(one coalesced upstream call) is `dispatching.py`'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from sluice.proxy import metrics
from sluice.proxy.http import asgi, errors
from sluice.proxy.llm import batchqueue

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

RETRY_AFTER_SECONDS = 1
"""What a caller refused for a full queue is told to wait: queues drain in batch times (ms)."""


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
        limits: batchqueue.Limits,
        process: Process[K, T, R],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.queue: batchqueue.BatchQueue[K, _Waiter[T, R]] = batchqueue.BatchQueue(limits)
        self.process = process
        self.clock = clock
        self._wake = asyncio.Event()
        self._sleeping_until: float | None = None
        self._timer: asyncio.Task[None] | None = None
        self._running: dict[asyncio.Task[None], list[_Waiter[T, R]]] = {}
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
        waiter = _Waiter(item, future)
        try:
            batch = self.queue.add(key, waiter, size, cost, self.clock())
        except batchqueue.QueueFullError:
            self._rejected.inc()
            raise errors.overloaded(RETRY_AFTER_SECONDS) from None
        except batchqueue.QueueClosedError:
            raise errors.shutting_down() from None
        self._depth.inc()
        if batch is not None:
            self._launch(batch)
        elif self._sleeping_until is None and self.queue.deadline() is not None:
            self._wake.set()  # the timer sleeps without a deadline; this item brings one
        try:
            return await future
        except asyncio.CancelledError:
            self._leave(key, waiter)
            raise

    def _leave(self, key: K, waiter: _Waiter[T, R]) -> None:
        """A caller left: take its item out, or cancel its batch if nobody else waits on it."""
        if self.queue.remove(key, waiter):
            self._depth.dec()
            return
        for task, waiters in self._running.items():
            if any(w is waiter for w in waiters):
                if all(w.future.cancelled() for w in waiters):
                    task.cancel()
                return

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
            await asyncio.gather(*self._running, return_exceptions=True)

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

    def _launch(self, batch: batchqueue.Batch[K, _Waiter[T, R]]) -> None:
        now = self.clock()
        self._depth.dec(len(batch.entries))
        self._in_flight.inc()
        self._sizes.observe(batch.size)
        metrics.batch_flushes.labels(self.name, batch.reason).inc()
        for entry in batch.entries:
            self._waits.observe(now - entry.enqueued)
        task = asyncio.get_running_loop().create_task(self._answer(batch))
        self._running[task] = [e.item for e in batch.entries]
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        del self._running[task]

    async def _answer(self, batch: batchqueue.Batch[K, _Waiter[T, R]]) -> None:
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
