"""Errors the proxy itself answers, in the OpenAI error shape clients already parse.

Upstream errors are passed through unchanged; only failures of the proxy's own making (bad
input, an unreachable, silent or garbled upstream, a full queue, shutdown) are built here.
"""

from __future__ import annotations

import orjson


class ProxyError(Exception):
    """A failure answered as `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        """The JSON body, as OpenAI would send it."""
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return orjson.dumps({"error": error})

    def __repr__(self) -> str:
        return f"<ProxyError {self.status} {self.code or self.type}: {self.message}>"


def bad_json(detail: str) -> ProxyError:
    return ProxyError(400, f"The request body is not valid JSON: {detail}", code="invalid_json")


def not_an_object() -> ProxyError:
    return ProxyError(400, "The request body must be a JSON object.", code="invalid_json")


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(413, f"The request body exceeds {limit} bytes.", code="request_too_large")


def client_gone() -> ProxyError:
    """The caller hung up before its request was whole: nothing can be answered, or acted on."""
    return ProxyError(400, "The request body ended before its end.", code="incomplete_body")


def request_timeout(what: str, seconds: float) -> ProxyError:
    return ProxyError(
        408,
        f"The request's {what} did not arrive within {seconds:g} seconds.",
        code="request_timeout",
        headers={"connection": "close"},
    )


def headers_too_large(limit: int) -> ProxyError:
    return ProxyError(
        431,
        f"The request's line and headers exceed {limit} bytes.",
        code="headers_too_large",
        headers={"connection": "close"},
    )


def not_found(path: str) -> ProxyError:
    return ProxyError(404, f"No route for {path}.", code="not_found")


def upstream_unreachable(detail: str) -> ProxyError:
    return ProxyError(
        502,
        f"The upstream API could not be reached: {detail}",
        type="upstream_error",
        code="upstream_unreachable",
    )


def upstream_broke_off(detail: str) -> ProxyError:
    """A streamed upstream answer that ended before its end; after the caller's answer began,
    its connection is dropped instead (`app.ProxyApp.http`)."""
    return ProxyError(
        502,
        f"The upstream API's answer broke off: {detail}",
        type="upstream_error",
        code="upstream_broke_off",
    )


def upstream_timeout(seconds: float) -> ProxyError:
    return ProxyError(
        504,
        f"The upstream API sent nothing for {seconds:g} seconds.",
        type="upstream_error",
        code="upstream_timeout",
    )


def internal() -> ProxyError:
    return ProxyError(
        500,
        "The proxy failed to answer this request; see its log.",
        type="server_error",
        code="internal_error",
    )


def shutting_down() -> ProxyError:
    return ProxyError(
        503,
        "The proxy is shutting down; retry on another replica.",
        type="server_error",
        code="shutting_down",
        headers={"retry-after": "1", "connection": "close"},
    )


def overloaded(retry_after_seconds: int) -> ProxyError:
    return ProxyError(
        429,
        "The proxy's queue is full; retry later.",
        type="rate_limit_error",
        code="queue_full",
        headers={"retry-after": str(retry_after_seconds)},
    )


def upstream_bad_answer(detail: str) -> ProxyError:
    """A 200 from the upstream that is not the answer it should be (not JSON, wrong shape)."""
    return ProxyError(
        502,
        f"The upstream API's answer could not be used: {detail}",
        type="upstream_error",
        code="upstream_bad_answer",
    )


def describe(error: BaseException) -> str:
    """A short, caller-safe description of a transport failure (upstream or cache backend)."""
    if isinstance(error, TimeoutError):
        return "timed out"
    host, port = getattr(error, "host", None), getattr(error, "port", None)
    if host is not None and port is not None:  # aiohttp's connector errors
        return f"cannot connect to {host}:{port}"
    return type(error).__name__ + (f": {error}" if str(error) else "")
