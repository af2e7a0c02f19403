"""A circuit breaker for the Redis cache: stop calling a dead backend, probe it back.

A pure state machine (every decision takes `now`), driven by `rediscache.RedisCache`:

    closed --(N consecutive failures)--> open --(cooldown over)--> half-open
    half-open --(probe succeeds)--> closed;  half-open --(probe fails)--> open, longer cooldown

While open, callers skip the backend entirely (a cache bypass costs nothing); in half-open
exactly one caller at a time is let through as the probe. Cooldowns double up to a ceiling, so a
Redis that stays down is tried every `max_cooldown` seconds, not hammered.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures; opens after `threshold` of them."""

    def __init__(
        self, threshold: int = 3, cooldown: float = 1.0, max_cooldown: float = 10.0
    ) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.state = State.CLOSED
        self.failures = 0
        self.cooldown = cooldown
        self.open_until = 0.0
        self._probing = False

    def allow(self, now: float) -> bool:
        """May a call go to the backend now? In half-open, True for one probe at a time."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if now < self.open_until:
                return False
            self.state = State.HALF_OPEN
        if self._probing:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        self.state = State.CLOSED
        self.failures = 0
        self.cooldown = self.base_cooldown
        self._probing = False

    def abandoned(self) -> None:
        """A call ended without a verdict (its caller was cancelled): free the probe slot."""
        self._probing = False

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.state is State.HALF_OPEN:
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self._open(now)
        elif self.state is State.CLOSED and self.failures >= self.threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state = State.OPEN
        self.open_until = now + self.cooldown
        self._probing = False

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self.state.value} failures={self.failures} "
            f"cooldown={self.cooldown:g}s open_until={self.open_until:g}>"
        )
