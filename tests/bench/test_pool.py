"""`ObjectPool`: reuse, reset, the bound, and safety from threads and tasks."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bench import pool


def test_a_released_object_is_reset_and_handed_out_again() -> None:
    buffers = pool.ObjectPool(list, list.clear, size=4)
    first = buffers.acquire()
    first += [1, 2, 3]
    buffers.release(first)
    again = buffers.acquire()
    assert again is first
    assert again == []
    assert (buffers.made, buffers.reused) == (1, 1)


def test_no_more_than_size_objects_are_kept_idle() -> None:
    buffers = pool.ObjectPool(bytearray, bytearray.clear, size=2)
    held = [buffers.acquire() for _ in range(5)]
    for item in held:
        buffers.release(item)
    assert buffers.idle == 2
    assert buffers.made == 5


def test_size_zero_keeps_nothing() -> None:
    dicts = pool.ObjectPool(dict, dict.clear, size=0)
    item = dicts.acquire()
    dicts.release(item)
    assert dicts.idle == 0
    assert dicts.acquire() is not item


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="size must be >= 0"):
        pool.ObjectPool(list, list.clear, size=-1)


def test_borrowed_gives_the_object_back_even_when_the_block_fails() -> None:
    buffers = pool.ObjectPool(list, list.clear, size=1)

    def fail_while_holding() -> None:
        with buffers.borrowed() as item:
            item.append("x")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_while_holding()
    assert buffers.idle == 1
    assert buffers.acquire() == []


def test_threads_never_share_an_object_and_the_bound_holds() -> None:
    holders: dict[int, int] = {}
    clashes: list[int] = []
    lock = threading.Lock()
    objects = pool.ObjectPool(list, list.clear, size=8)

    def work() -> None:
        for _ in range(2000):
            item = objects.acquire()
            with lock:
                if id(item) in holders:
                    clashes.append(id(item))
                holders[id(item)] = threading.get_ident()
            item.append(1)
            with lock:
                del holders[id(item)]
            objects.release(item)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clashes == []
    assert objects.idle <= 8
    assert objects.made + objects.reused == 8 * 2000


async def test_tasks_that_await_while_holding_get_distinct_objects() -> None:
    objects = pool.ObjectPool(list, list.clear, size=4)

    async def hold() -> int:
        with objects.borrowed() as item:
            item.append(1)
            await asyncio.sleep(0)
            assert item == [1]  # nobody else was handed it meanwhile
            return id(item)

    held = await asyncio.gather(*(hold() for _ in range(16)))
    assert len(held) == 16
    assert objects.idle == 4
    assert objects.made == 16


def test_repr_tells_the_state() -> None:
    objects = pool.ObjectPool(list, list.clear, size=3)
    objects.release(objects.acquire())
    assert repr(objects) == "<ObjectPool list idle=1/3 made=1 reused=0>"
