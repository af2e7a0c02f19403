"""Who asks to be deferred, until when, and which asks are refused (`deferred.asks`)."""

from __future__ import annotations

import pytest

from sluice.api import DeferredSettings
from sluice.proxy.http import errors
from sluice.proxy.llm.deferred import asks


def request(*headers: tuple[bytes, bytes]) -> tuple[bytes | None, bytes | None]:
    """The two headers `asks.of` reads, from a request's headers."""
    found = dict(headers)
    return found.get(asks.HEADER), found.get(b"prefer")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param(b"2h", 7200, id="hours"),
        pytest.param(b"30m", 1800, id="minutes"),
        pytest.param(b"90s", 90, id="seconds"),
        pytest.param(b"1500ms", 1.5, id="milliseconds"),
        pytest.param(b"120", 120, id="plain-seconds"),
        pytest.param(b"true", 86400, id="true-is-the-default-deadline"),
        pytest.param(b" 2H ", 7200, id="case-and-spaces"),
    ],
)
def test_the_header_names_the_deadline(value: bytes, seconds: float) -> None:
    ask = asks.of(*request((asks.HEADER, value)), {}, DeferredSettings())
    assert ask == asks.Ask(seconds, respond_async=False)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"soon", id="a-word"),
        pytest.param(b"25h", id="beyond-the-24h-window"),
        pytest.param(b"0s", id="zero"),
        pytest.param(b"-5m", id="negative"),
        pytest.param(b"2d", id="unknown-unit"),
    ],
)
def test_a_bad_deadline_is_a_400_naming_the_header(value: bytes) -> None:
    with pytest.raises(errors.ProxyError) as caught:
        asks.of(*request((asks.HEADER, value)), {}, DeferredSettings())
    assert caught.value.status == 400
    assert caught.value.param == "x-sluice-deferred"


def test_without_the_header_only_a_deferred_route_defers_and_false_opts_out() -> None:
    off, on = DeferredSettings(), DeferredSettings(enabled=True, default_deadline_seconds=600)
    assert asks.of(*request(), {}, off) is None
    assert asks.of(*request(), {}, on) == asks.Ask(600, respond_async=False)
    assert asks.of(*request((asks.HEADER, b"false")), {}, on) is None


def test_a_stream_that_asks_is_refused_and_one_that_does_not_is_left_alone() -> None:
    on = DeferredSettings(enabled=True)
    with pytest.raises(errors.ProxyError) as caught:
        asks.of(*request((asks.HEADER, b"1h")), {"stream": True}, on)
    assert "streaming" in caught.value.message
    assert asks.of(*request(), {"stream": True}, on) is None


@pytest.mark.parametrize(
    ("prefer", "wanted"),
    [
        pytest.param(b"respond-async", True, id="alone"),
        pytest.param(b"return=minimal, respond-async, wait=10", True, id="among-others"),
        pytest.param(b"Respond-Async", True, id="case"),
        pytest.param(b"respond-asynchronously", False, id="longer-token"),
        pytest.param(b"wait=10", False, id="other-preference"),
    ],
)
def test_prefer_respond_async(prefer: bytes, wanted: bool) -> None:
    ask = asks.of(*request((asks.HEADER, b"1h"), (b"prefer", prefer)), {}, DeferredSettings())
    assert ask is not None
    assert ask.respond_async is wanted
