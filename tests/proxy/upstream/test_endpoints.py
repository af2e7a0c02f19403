"""Endpoint choice, passive health and retry timing: pure decisions, tested with plain numbers."""

from __future__ import annotations

import email.utils

import pytest

from sluice.api import HealthSettings, RetrySettings
from sluice.proxy.upstream import endpoints

HEALTH = HealthSettings(failure_threshold=2, cooldown_seconds=10)


def test_round_robin_visits_every_endpoint_in_turn() -> None:
    pool = endpoints.EndpointSet(["http://a", "http://b", "http://c"], HEALTH)
    assert [pool.pick(0).url for _ in range(6)] == ["http://a", "http://b", "http://c"] * 2


def test_an_endpoint_failing_threshold_times_rests_for_the_cooldown() -> None:
    pool = endpoints.EndpointSet(["http://a", "http://b"], HEALTH)
    a = pool.endpoints[0]
    pool.failed(a, now=100)
    assert [pool.pick(100).url for _ in range(2)] == ["http://a", "http://b"]
    pool.failed(a, now=100)
    assert {pool.pick(105).url for _ in range(4)} == {"http://b"}
    assert "http://a" in {pool.pick(110).url for _ in range(2)}


def test_success_clears_the_failure_count() -> None:
    pool = endpoints.EndpointSet(["http://a"], HEALTH)
    a = pool.endpoints[0]
    pool.failed(a, now=0)
    pool.succeeded(a)
    pool.failed(a, now=0)
    assert a.rested_until == 0


def test_when_all_endpoints_rest_the_one_back_soonest_is_used() -> None:
    pool = endpoints.EndpointSet(["http://a", "http://b"], HEALTH)
    a, b = pool.endpoints
    for _ in range(2):
        pool.failed(b, now=0)
        pool.failed(a, now=1)
    assert pool.pick(2).url == "http://b"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"retry-after": "2"}, 2.0, id="seconds"),
        pytest.param({"retry-after": "0.5"}, 0.5, id="fraction"),
        pytest.param({"retry-after-ms": "250", "retry-after": "9"}, 0.25, id="ms-wins"),
        pytest.param({"retry-after": "-1"}, None, id="negative-ignored"),
        pytest.param({"retry-after": "soon"}, None, id="garbage-ignored"),
        pytest.param({}, None, id="absent"),
    ],
)
def test_retry_after_forms(headers: dict[str, str], expected: float | None) -> None:
    assert endpoints.retry_after_seconds(headers, now=0) == expected


def test_retry_after_as_http_date_is_relative_to_now() -> None:
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert endpoints.retry_after_seconds({"retry-after": date}, now=1_000_000) == 30


def test_backoff_doubles_with_full_jitter_and_caps() -> None:
    settings = RetrySettings(backoff_seconds=0.5, max_backoff_seconds=3)
    top = [endpoints.backoff(n, settings, None, rand=lambda: 1.0) for n in (1, 2, 3, 4)]
    assert top == [0.5, 1.0, 2.0, 3.0]
    assert endpoints.backoff(2, settings, None, rand=lambda: 0.25) == 0.25


def test_backoff_honours_the_server_unless_it_asks_too_much() -> None:
    settings = RetrySettings(max_backoff_seconds=3)
    assert endpoints.backoff(1, settings, 2.5) == 2.5
    assert endpoints.backoff(1, settings, 30) is None


RETRY = RetrySettings(max_attempts=3, backoff_seconds=0.2, max_backoff_seconds=5)


def wait(outcome: int | str, attempt: int = 1, **kwargs: object) -> float | None:
    defaults = {"method": "GET", "now": 0.0, "remaining": 30.0, "rand": lambda: 1.0}
    options: dict[str, object] = defaults | kwargs
    headers = options.pop("headers", None)
    settings = options.pop("settings", RETRY)
    return endpoints.retry_wait(settings, attempt, outcome, headers, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        pytest.param(endpoints.CONNECT_ERROR, 0.2, id="connect-error"),
        pytest.param(429, 0.2, id="429"),
        pytest.param(503, 0.2, id="503"),
        pytest.param(endpoints.TIMEOUT, None, id="timeout-may-bill-twice"),
        pytest.param(500, None, id="500"),
        pytest.param(400, None, id="400"),
        pytest.param(200, None, id="200"),
    ],
)
def test_which_outcomes_are_retried(outcome: int | str, expected: float | None) -> None:
    assert wait(outcome) == expected


def test_no_retry_past_the_attempts_or_the_budget() -> None:
    assert wait(429, attempt=2) == 0.4
    assert wait(429, attempt=3) is None
    assert wait(429, remaining=0.1) is None


def test_the_servers_retry_after_decides_the_wait_within_bounds() -> None:
    assert wait(429, headers={"retry-after": "2"}) == 2.0
    assert wait(429, headers={"retry-after": "60"}) is None  # beyond maxBackoffSeconds


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        pytest.param(502, None, id="502-may-have-billed"),
        pytest.param(504, None, id="504-may-have-billed"),
        pytest.param(503, 0.2, id="503-did-not-work"),
        pytest.param(429, 0.2, id="429-did-not-work"),
        pytest.param(endpoints.CONNECT_ERROR, 0.2, id="never-reached"),
    ],
)
def test_a_post_is_not_retried_where_the_upstream_may_have_done_the_work(
    outcome: int | str, expected: float | None
) -> None:
    assert wait(outcome, method="POST") == expected


def test_on_status_opts_a_post_in_to_retries_on_502() -> None:
    settings = RetrySettings(max_attempts=3, backoff_seconds=0.2, on_status=[502])
    assert wait(502, method="POST", settings=settings) == 0.2
    assert wait(504, method="POST", settings=settings) is None
