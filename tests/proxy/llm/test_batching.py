"""The batch queue's decisions under a fake clock, then its asyncio driver and the limiter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sluice.proxy.http import errors
from sluice.proxy.llm import batching, batchqueue


def limits(**changes: Any) -> batchqueue.Limits:
    base: dict[str, Any] = {"max_size": 4, "max_wait": 0.010, "max_concurrent": 2, "max_queue": 100}
    return batchqueue.Limits(**{**base, **changes})


def items(batch: batchqueue.Batch[str, str] | None) -> list[str]:
    assert batch is not None
    return [e.item for e in batch.entries]


# --- BatchQueue: pure decisions ---------------------------------------------------------------


def test_a_batch_goes_as_soon_as_it_is_full() -> None:
    queue: batchqueue.BatchQueue[str, str] = batchqueue.BatchQueue(limits())
    assert [queue.add("k", f"i{n}", 1, 0, now=0.0) for n in range(3)] == [None] * 3
    batch = queue.add("k", "i3", 1, 0, now=0.001)
    assert items(batch) == ["i0", "i1", "i2", "i3"]
    assert batch is not None
    assert batch.reason == "size"
    assert (queue.pending, queue.in_flight) == (0, 1)


def test_a_partial_batch_goes_when_its_oldest_item_has_waited_max_wait() -> None:
    queue: batchqueue.BatchQueue[str, str] = batchqueue.BatchQueue(limits())
    queue.add("k", "a", 1, 0, now=1.000)
    queue.add("k", "b", 1, 0, now=1.004)
    assert queue.deadline() == pytest.approx(1.010)
    assert queue.due(now=1.009) is None
    batch = queue.due(now=1.010)
    assert items(batch) == ["a", "b"]
    assert batch is not None
    assert batch.reason == "timeout"
    assert queue.deadline() is None


def test_items_of_different_keys_never_share_a_batch() -> None:
    queue: batchqueue.BatchQueue[str, str] = batchqueue.BatchQueue(limits())
    queue.add("tenant-a", "a1", 1, 0, now=0.0)
    queue.add("tenant-b", "b1", 1, 0, now=0.001)
    queue.add("tenant-a", "a2", 1, 0, now=0.002)
    assert items(queue.due(now=0.011)) == ["a1", "a2"]
    assert queue.due(now=0.0105) is None
    assert items(queue.due(now=0.012)) == ["b1"]


def test_items_count_by_their_size_and_an_oversized_item_goes_alone() -> None:
    queue: batchqueue.BatchQueue[str, str] = batchqueue.BatchQueue(limits(max_concurrent=8))
    assert queue.add("k", "three", 3, 0, now=0.0) is None
    assert items(queue.add("k", "two", 2, 0, now=0.0)) == ["three"]  # 3 + 2 > 4: three goes
    assert items(queue.add("k", "ten", 10, 0, now=0.0)) == ["two"]
    assert items(queue.due(now=0.0)) == ["ten"]  # still a full lane: sent, alone
    assert queue.pending == 0


def test_a_cost_budget_caps_a_batch_like_its_size() -> None:
    queue: batchqueue.BatchQueue[str, str] = batchqueue.BatchQueue(limits(max_cost=100))
    assert queue.add("k", "a", 1, 60, now=0.0) is None
    assert items(queue.add("k", "b", 1, 60, now=0.0)) == ["a"]
    assert queue.pending == 1


def test_no_more_than_max_concurrent_batches_are_in_flight() -> None:
    queue: batchqueue.BatchQueue[str, str] = batchqueue.BatchQueue(limits(max_size=1))
    first = queue.add("k", "a", 1, 0, now=0.0)
    second = queue.add("k", "b", 1, 0, now=0.0)
    assert queue.add("k", "c", 1, 0, now=0.0) is None  # full, but both slots are taken
    assert queue.due(now=1.0) is None
    assert queue.deadline() is None  # nothing will happen by itself: wait for `done`
    assert first is not None
    assert second is not None
    queue.done(first)
    batch = queue.due(now=1.0)
    assert items(batch) == ["c"]
    assert batch is not None
    assert batch.reason == "size"


def test_the_oldest_ready_lane_goes_first_when_a_slot_frees() -> None:
    queue: batchqueue.BatchQueue[str, str] = batchqueue.BatchQueue(limits(max_concurrent=1))
    running = queue.add("x", "x1", 4, 0, now=0.0)
    queue.add("late", "l1", 1, 0, now=0.005)
    queue.add("early", "e1", 1, 0, now=0.001)
    assert running is not None
    queue.done(running)
    assert items(queue.due(now=0.1)) == ["e1"]


def test_a_full_queue_refuses_more_items() -> None:
    queue: batchqueue.BatchQueue[str, str] = batchqueue.BatchQueue(limits(max_queue=2))
    queue.add("a", "1", 1, 0, now=0.0)
    queue.add("b", "2", 1, 0, now=0.0)
    with pytest.raises(batchqueue.QueueFullError):
        queue.add("c", "3", 1, 0, now=0.0)
    assert queue.pending == 2


def test_close_flushes_everything_waiting_slots_permitting_and_refuses_more() -> None:
    queue: batchqueue.BatchQueue[str, str] = batchqueue.BatchQueue(limits(max_concurrent=1))
    queue.add("a", "a1", 1, 0, now=0.0)
    queue.add("b", "b1", 1, 0, now=0.0)
    queue.close()
    assert queue.deadline() == 0.0
    first = queue.due(now=0.0)
    assert items(first) == ["a1"]
    assert first is not None
    assert first.reason == "shutdown"
    assert queue.due(now=0.0) is None
    queue.done(first)
    assert items(queue.due(now=0.0)) == ["b1"]
    with pytest.raises(batchqueue.QueueClosedError):
        queue.add("a", "late", 1, 0, now=0.0)


def test_the_queue_describes_itself() -> None:
    queue: batchqueue.BatchQueue[str, str] = batchqueue.BatchQueue(limits())
    queue.add("k", "a", 1, 0, now=0.0)
    assert repr(queue) == "<BatchQueue pending=1 lanes=1 in_flight=0/2>"


# --- Batcher: the asyncio driver --------------------------------------------------------------


class Recorder:
    """A batch processor that records its batches and answers each item with itself, upper."""

    def __init__(self, delay: float = 0.0, fail: Exception | None = None) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay
        self.fail = fail

    async def __call__(self, key: str, batch: list[str]) -> list[str]:
        self.batches.append(batch)
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [item.upper() for item in batch]


async def test_every_caller_gets_its_own_result_from_a_shared_batch() -> None:
    process = Recorder()
    batcher = batching.Batcher("test", limits(max_wait=5.0), process)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit("k", f"item{n}") for n in range(8)))
    assert results == [f"ITEM{n}" for n in range(8)]
    assert process.batches == [[f"item{n}" for n in range(4)], [f"item{n}" for n in range(4, 8)]]
    await batcher.stop()


async def test_a_partial_batch_is_sent_after_max_wait() -> None:
    process = Recorder()
    batcher = batching.Batcher("test", limits(max_wait=0.02), process)
    batcher.start()
    assert await asyncio.gather(batcher.submit("k", "a"), batcher.submit("k", "b")) == ["A", "B"]
    assert process.batches == [["a", "b"]]
    await batcher.stop()


async def test_an_error_in_a_batch_reaches_each_of_its_callers() -> None:
    batcher = batching.Batcher("test", limits(), Recorder(fail=errors.upstream_unreachable("x")))
    batcher.start()
    outcomes = await asyncio.gather(
        *(batcher.submit("k", str(n)) for n in range(4)), return_exceptions=True
    )
    assert all(isinstance(o, errors.ProxyError) and o.status == 502 for o in outcomes)
    await batcher.stop()


async def test_a_full_queue_answers_429_with_retry_after() -> None:
    slow = Recorder(delay=0.05)
    batcher = batching.Batcher("test", limits(max_size=1, max_concurrent=1, max_queue=1), slow)
    batcher.start()
    running = asyncio.ensure_future(batcher.submit("k", "first"))  # in flight
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(batcher.submit("k", "second"))  # queued
    await asyncio.sleep(0)
    with pytest.raises(errors.ProxyError) as refused:
        await batcher.submit("k", "third")
    assert refused.value.status == 429
    assert refused.value.headers["retry-after"] == "1"
    assert await asyncio.gather(running, waiting) == ["FIRST", "SECOND"]
    await batcher.stop()


async def test_stop_sends_what_is_pending_at_once_and_answers_every_caller() -> None:
    process = Recorder(delay=0.01)
    batcher = batching.Batcher("test", limits(max_wait=60.0, max_concurrent=1), process)
    batcher.start()
    callers = [asyncio.ensure_future(batcher.submit(k, k)) for k in ("a", "b", "c")]
    await asyncio.sleep(0.01)
    assert "pending=3/4" in repr(batcher)
    async with asyncio.timeout(5):  # far less than max_wait
        await batcher.stop()
    assert [c.result() for c in callers] == ["A", "B", "C"]
    with pytest.raises(errors.ProxyError) as refused:
        await batcher.submit("a", "late")
    assert refused.value.status == 503


async def test_a_batcher_describes_itself() -> None:
    batcher = batching.Batcher("embeddings", limits(), Recorder())
    assert repr(batcher) == "<Batcher embeddings pending=0/4 oldest=0ms in_flight=0/2>"


# --- Limiter ----------------------------------------------------------------------------------


async def test_the_limiter_bounds_calls_in_flight_and_refuses_beyond_its_queue() -> None:
    limiter = batching.Limiter("test", limit=1, max_queue=1)
    await limiter.acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    assert repr(limiter) == "<Limiter test in_flight=1/1 waiting=1>"
    with pytest.raises(errors.ProxyError) as refused:
        await limiter.acquire()
    assert refused.value.status == 429
    limiter.release()
    await waiter
    limiter.release()
    assert repr(limiter) == "<Limiter test in_flight=0/1 waiting=0>"


async def test_a_held_stream_gives_its_slot_back_when_it_ends_or_is_closed() -> None:
    released: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    held = batching.HeldStream(chunks(), lambda: released.append("x"))
    assert [c async for c in held] == [b"a", b"b"]
    await held.aclose()
    assert released == ["x"]
    unread = batching.HeldStream(chunks(), lambda: released.append("y"))
    await unread.aclose()
    assert released == ["x", "y"]
