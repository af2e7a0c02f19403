"""Whether a request asks to be deferred, and until when: `x-sluice-deferred` and `Prefer`.

`x-sluice-deferred: <deadline>` (`90s`, `30m`, `2h`, or plain seconds) or `true` (the policy's
`defaultDeadlineSeconds`) opts in; `false` opts out of a route the policy defers as a whole.
`Prefer: respond-async` (RFC 7240) asks for `202 Accepted` at once instead of an answer held
until the job is done. Streaming cannot be deferred: a stream that asks gets a 400. Pure.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from sluice.api import DeferredSettings
from sluice.proxy.http import errors

HEADER = b"x-sluice-deferred"
WINDOW_SECONDS = 86400.0
"""The Batch API's completion window: no deadline can lie beyond it."""
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclasses.dataclass(frozen=True, slots=True)
class Ask:
    """A request's wish to be deferred."""

    deadline_seconds: float
    """How long from now the caller can wait for its answer."""
    respond_async: bool
    """Answer 202 with the job's location at once, rather than hold the connection."""


def of(
    raw: bytes | None, prefer: bytes | None, payload: dict[str, Any], settings: DeferredSettings
) -> Ask | None:
    """The `Ask` of a request with these `x-sluice-deferred` and `Prefer` headers and body; None
    when it is not deferred; a 400 `ProxyError` for a bad ask."""
    value = raw.decode("latin-1").strip().lower() if raw is not None else None
    if value == "false" or (value is None and not settings.enabled):
        return None
    if payload.get("stream") is True:
        if value is None:
            return None  # the route defers what it can; a stream it cannot, and did not ask
        raise invalid("streaming requests cannot be deferred; drop `stream` or the header")
    if value is None or value == "true":
        deadline = settings.default_deadline_seconds
    else:
        deadline = duration(value)
    return Ask(deadline, respond_async=prefers_async(prefer))


def duration(value: str) -> float:
    """Seconds of a deadline such as `90s`, `30m`, `2h` or `120`; a 400 for anything else."""
    found = _DURATION.fullmatch(value)
    if found is None:
        raise invalid(f"expected true, false or a duration such as 2h, 30m or 90s, not {value!r}")
    seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if not 0 < seconds <= WINDOW_SECONDS:
        raise invalid("the deadline must be more than 0 and at most 24h (the batch window)")
    return seconds


def prefers_async(prefer: bytes | None) -> bool:
    """Does a `Prefer` header hold the `respond-async` preference?"""
    if not prefer:
        return False
    tokens = (part.split(b"=", 1)[0].strip().lower() for part in prefer.split(b","))
    return b"respond-async" in tokens


def invalid(detail: str) -> errors.ProxyError:
    return errors.ProxyError(
        400, f"x-sluice-deferred: {detail}.", code="invalid_deferred", param="x-sluice-deferred"
    )
