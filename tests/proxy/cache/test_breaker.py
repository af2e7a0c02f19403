"""The Redis circuit breaker as a state machine on a fake clock."""

from __future__ import annotations

from sluice.proxy.cache import breaker
from sluice.proxy.cache.breaker import State


def failing(circuit: breaker.CircuitBreaker, times: int, now: float) -> None:
    for _ in range(times):
        assert circuit.allow(now)
        circuit.failed(now)


def test_it_stays_closed_below_the_threshold_and_a_success_resets_the_count() -> None:
    circuit = breaker.CircuitBreaker(threshold=3)
    failing(circuit, 2, now=0)
    circuit.succeeded()
    failing(circuit, 2, now=0)
    assert circuit.state is State.CLOSED
    assert circuit.allow(0)


def test_it_opens_after_threshold_failures_and_refuses_until_the_cooldown_ends() -> None:
    circuit = breaker.CircuitBreaker(threshold=3, cooldown=1.0)
    failing(circuit, 3, now=10)
    assert circuit.state is State.OPEN
    assert not circuit.allow(10.5)
    assert circuit.allow(11.0)
    assert circuit.state is State.HALF_OPEN


def test_half_open_lets_exactly_one_probe_through() -> None:
    circuit = breaker.CircuitBreaker(threshold=1, cooldown=1.0)
    failing(circuit, 1, now=0)
    assert circuit.allow(1)
    assert not circuit.allow(1)
    assert not circuit.allow(1.5)


def test_a_successful_probe_closes_it() -> None:
    circuit = breaker.CircuitBreaker(threshold=1, cooldown=1.0)
    failing(circuit, 1, now=0)
    assert circuit.allow(1)
    circuit.succeeded()
    assert circuit.state is State.CLOSED
    assert circuit.allow(1)
    assert circuit.allow(1)


def test_a_failed_probe_reopens_it_with_a_doubled_cooldown_up_to_the_ceiling() -> None:
    circuit = breaker.CircuitBreaker(threshold=1, cooldown=1.0, max_cooldown=3.0)
    failing(circuit, 1, now=0)
    opened = []
    now = 0.0
    for _ in range(4):
        now = circuit.open_until
        assert circuit.allow(now)
        circuit.failed(now)
        opened.append(circuit.open_until - now)
    assert opened == [2.0, 3.0, 3.0, 3.0]
    now = circuit.open_until
    assert circuit.allow(now)
    circuit.succeeded()
    failing(circuit, 1, now=now)
    assert circuit.open_until - now == 1.0  # the cooldown starts over after a recovery


def test_an_abandoned_probe_frees_the_slot_for_the_next_caller() -> None:
    circuit = breaker.CircuitBreaker(threshold=1, cooldown=1.0)
    failing(circuit, 1, now=0)
    assert circuit.allow(1)
    circuit.abandoned()
    assert circuit.allow(1)
    assert "half_open" in repr(circuit)
