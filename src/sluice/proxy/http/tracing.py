"""Request ids and W3C trace context: what identifies a request from the caller to the upstream.

Every request has an `x-request-id`: the caller's when it sent one, else one made here. It goes
upstream with the request and back in the answer, and it is in the access log line. The caller's
`traceparent` and `tracestate` go upstream unchanged, so its trace continues at the provider: the
LLM routes pass the caller's headers on anyway; the MCP gateway builds its own requests, so it
reads them from `current`, set for the request being served.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import re
import types
from collections.abc import Mapping

from sluice.proxy.http.asgi import Headers

REQUEST_ID = b"x-request-id"
UPSTREAM_REQUEST_ID = b"x-upstream-request-id"
"""The upstream's own `x-request-id`, renamed on the way back (`with_request_id`) so that the
caller's stays unique (the openai SDK reads `x-request-id` into `_request_id`)."""
PASSED = (REQUEST_ID, b"traceparent", b"tracestate")
"""What a request carries to every upstream, MCP servers included."""
MAX_ID_BYTES = 200
"""A caller's id longer than this is replaced: it is logged and sent on with every call."""

NONE: Mapping[str, str] = types.MappingProxyType({})
current: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("trace", default=NONE)
"""The `PASSED` headers of the request being served (set by the app for the MCP routes)."""
# Printable ASCII without spaces: the id is logged and sent on as a header.
_USABLE_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_ID_BYTES)

# A random prefix for the process and a counter: unique across replicas and restarts for all
# practical purposes, and ~10x cheaper than formatting a uuid4 on every request.
_PREFIX = os.urandom(6).hex().encode()
_COUNTER = itertools.count(1)


def new_id() -> bytes:
    """A fresh request id, such as `9f1c2a7be04d-1a2b`."""
    return b"%s-%x" % (_PREFIX, next(_COUNTER))


def adopt(headers: Headers) -> bytes:
    """The request's id: the caller's if it sent a usable one, else a new one added to `headers`
    (so that every upstream call made for the request carries it)."""
    for index, (key, value) in enumerate(headers):
        if key == REQUEST_ID:
            if _USABLE_ID.fullmatch(value):
                return value
            del headers[index]
            break
    made = new_id()
    headers.append((REQUEST_ID, made))
    return made


def passed(headers: Headers) -> dict[str, str]:
    """The `PASSED` headers of a request, as an upstream call sends them."""
    return {key.decode(): value.decode("latin-1") for key, value in headers if key in PASSED}


def with_request_id(headers: Headers, request_id: bytes) -> Headers:
    """An answer's headers with the request's id; an id already there (the upstream's, passed on
    by any route) is kept as `x-upstream-request-id`."""
    kept = [(UPSTREAM_REQUEST_ID, v) if k == REQUEST_ID else (k, v) for k, v in headers]
    kept.append((REQUEST_ID, request_id))
    return kept
