"""Single-flight: one run of the work per key, shared by every caller, cancelled by none."""

from __future__ import annotations

import asyncio

import pytest

from sluice.proxy.cache import flights


async def opened_by(gate: asyncio.Event, value: str) -> str:
    """Work that ends with `value` once `gate` is set."""
    await gate.wait()
    return value


async def test_callers_of_one_key_share_one_run_and_the_key_is_free_after() -> None:
    shared: flights.Flights[str, int] = flights.Flights()
    gate, runs = asyncio.Event(), []

    async def work() -> int:
        runs.append(1)
        await gate.wait()
        return 42

    first = shared.launch(("k",), work())
    assert shared.get("k") is first
    waiting = [asyncio.create_task(shared.wait(first)) for _ in range(5)]
    gate.set()
    assert await asyncio.gather(*waiting) == [42] * 5
    assert runs == [1]
    assert shared.get("k") is None
    assert len(shared) == 0


async def test_a_caller_that_leaves_cancels_nothing_for_the_others() -> None:
    shared: flights.Flights[str, str] = flights.Flights()
    gate = asyncio.Event()
    flight = shared.launch(("k",), opened_by(gate, "done"))
    leaving = asyncio.create_task(shared.wait(flight))
    staying = asyncio.create_task(shared.wait(flight))
    await asyncio.sleep(0)
    leaving.cancel()
    gate.set()
    assert await staying == "done"
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_one_flight_answers_every_key_it_was_launched_for() -> None:
    shared: flights.Flights[str, dict[str, int]] = flights.Flights()

    async def work() -> dict[str, int]:
        return {"a": 1, "b": 2}

    flight = shared.launch(("a", "b"), work())
    assert shared.get("a") is shared.get("b") is flight
    assert (await shared.wait(flight))["b"] == 2
    assert shared.get("a") is None
    assert shared.get("b") is None


async def test_a_failed_flight_fails_its_callers_and_frees_its_key() -> None:
    shared: flights.Flights[str, int] = flights.Flights()

    async def work() -> int:
        raise ValueError("upstream said no")

    flight = shared.launch(("k",), work())
    with pytest.raises(ValueError, match="said no"):
        await shared.wait(flight)
    await shared.stop()
    assert shared.get("k") is None


async def test_the_last_caller_to_leave_cancels_the_flight() -> None:
    shared: flights.Flights[str, str] = flights.Flights()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def work() -> str:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    flight = shared.launch(("k",), work())
    callers = [asyncio.create_task(shared.wait(flight)) for _ in range(2)]
    await started.wait()
    callers[0].cancel()
    await asyncio.sleep(0)
    assert not flight.cancelled()
    callers[1].cancel()
    await asyncio.wait_for(cancelled.wait(), 1)
    assert shared.get("k") is None


async def test_a_follower_out_of_patience_abandons_the_flight_which_goes_on_for_its_launcher() -> (
    None
):
    shared: flights.Flights[str, str] = flights.Flights()
    gate = asyncio.Event()
    flight = shared.launch(("k",), opened_by(gate, "done"))
    launcher = asyncio.create_task(shared.wait(flight))
    with pytest.raises(flights.AbandonedError):
        await shared.wait(flight, patience=0.01)
    gate.set()
    assert await launcher == "done"


async def test_a_member_that_received_its_answer_cancels_nothing_when_it_leaves() -> None:
    shared: flights.Flights[str, str] = flights.Flights()
    handed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    gate = asyncio.Event()

    async def work() -> str:
        handed.set_result("first bytes")  # like a stream handed to its first caller
        await gate.wait()
        return "stored"

    flight = shared.launch(("k",), work())
    with shared.member(flight):
        assert await handed == "first bytes"
    follower = asyncio.create_task(shared.wait(flight))
    await asyncio.sleep(0)
    gate.set()
    assert await follower == "stored"
