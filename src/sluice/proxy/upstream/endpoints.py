"""Which upstream endpoint to use next, and whether and how long to wait before a retry: pure
decisions.

The clients (`llm.client`) do the I/O and report outcomes here; nothing in this module touches
the network or reads the clock itself, so round-robin, resting and backoff are tested with plain
numbers.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable, Mapping

from sluice.api import HealthSettings, RetrySettings

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
MAY_HAVE_WORKED = frozenset({502, 504})
"""Statuses that can come after the upstream did the work: a retried POST could bill twice."""
TIMEOUT, CONNECT_ERROR = "timeout", "error"
"""Outcomes of an attempt that got no status: the upstream was silent, or unreachable."""


class Endpoint:
    """One base URL and its passive health: consecutive failures and when its rest ends."""

    __slots__ = ("failures", "label", "rested_until", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.label = url.split("://", 1)[-1].split("/", 1)[0]
        self.failures = 0
        self.rested_until = 0.0

    def __repr__(self) -> str:
        rest = self.rested_until
        return f"<Endpoint {self.label} failures={self.failures} rested_until={rest:g}>"


class EndpointSet:
    """Round-robin over endpoints, skipping those resting after `failureThreshold` failures."""

    def __init__(self, urls: list[str], health: HealthSettings) -> None:
        self.endpoints = [Endpoint(u) for u in urls]
        self.health = health
        self._next = 0

    def pick(self, now: float) -> Endpoint:
        """The next healthy endpoint; when all rest, the one whose rest ends first."""
        count = len(self.endpoints)
        for step in range(count):
            endpoint = self.endpoints[(self._next + step) % count]
            if endpoint.rested_until <= now:
                self._next = (self._next + step + 1) % count
                return endpoint
        return min(self.endpoints, key=lambda e: e.rested_until)

    def succeeded(self, endpoint: Endpoint) -> None:
        endpoint.failures = 0
        endpoint.rested_until = 0.0

    def failed(self, endpoint: Endpoint, now: float) -> None:
        endpoint.failures += 1
        if endpoint.failures >= self.health.failure_threshold:
            endpoint.rested_until = now + self.health.cooldown_seconds

    def __repr__(self) -> str:
        return f"<EndpointSet {self.endpoints!r}>"


def retry_after_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """The server's requested wait: `retry-after-ms`, `retry-after` seconds or HTTP date.

    Values that are negative or unparsable are ignored (FACTS.md: some providers send -1).
    """
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            value = float(ms) / 1000
        except ValueError:
            value = -1
        return value if value >= 0 else None
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            value = float(email.utils.parsedate_to_datetime(raw).timestamp()) - now
        except (TypeError, ValueError):
            return None
    return value if value >= 0 else None


def backoff(
    attempt: int,
    settings: RetrySettings,
    server_wait: float | None,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before attempt `attempt + 1`, or None when the server asks for too long.

    Exponential with full jitter, so that many callers failing at once do not retry in step; a
    server's `Retry-After` wins when it is within `maxBackoffSeconds`.
    """
    if server_wait is not None:
        return server_wait if server_wait <= settings.max_backoff_seconds else None
    ceiling = min(settings.max_backoff_seconds, settings.backoff_seconds * 2.0 ** (attempt - 1))
    return ceiling * rand()


def retry_wait(
    settings: RetrySettings,
    attempt: int,
    outcome: int | str,
    headers: Mapping[str, str] | None,
    *,
    method: str,
    now: float,
    remaining: float,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before retrying attempt `attempt`, whose `outcome` was a status code,
    `TIMEOUT` or `CONNECT_ERROR`; None when it must not be retried.

    A timeout is never retried, nor a POST's 502 or 504 unless `onStatus` names it: the upstream
    may have done the work, and a retry could bill twice. `now` is wall-clock time (for an
    HTTP-date `Retry-After`); `remaining` the retry budget left.
    """
    if outcome == TIMEOUT or attempt >= settings.max_attempts:
        return None
    if outcome != CONNECT_ERROR and outcome not in RETRYABLE_STATUSES:
        return None
    if method == "POST" and outcome in MAY_HAVE_WORKED and outcome not in settings.on_status:
        return None
    server_wait = retry_after_seconds(headers, now) if headers is not None else None
    wait = backoff(attempt, settings, server_wait, rand)
    return wait if wait is not None and wait < remaining else None
