"""Slow and oversized requests, refused at the connection: uvicorn's httptools protocol, with
deadlines for a request's head and body and a bound on the head's size.

uvicorn bounds only idle keep-alive connections: a client that sends its headers a byte at a
time (slowloris), or a body that never ends, holds a connection (and, for a body, a request
task) for ever, and httptools keeps a header of any size. Here:

* a request's line and headers must arrive within `headerTimeoutSeconds` of the connection
  opening or of the request's first byte, and within `maxHeaderBytes`;
* its body within `bodyTimeoutSeconds` of its headers;

else the caller gets a 408 (431 for a head too large) in OpenAI's error shape and the connection
is closed. A request whose answer has begun is never interrupted here: it is the caller that is
waiting then, not the proxy. Deadlines are loop timers armed once per request, so the hot path
pays two `call_later`s and a sum over the header lengths.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from sluice.proxy.http import errors

log = logging.getLogger(__name__)

LINGER_SECONDS = 2.0
"""After a refusal, how long what the caller still sends is read and dropped before the close:
closing a socket with unread data makes the kernel send a reset, which can destroy the refusal
before the caller read it (nginx's lingering close, for the same reason)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """How long a request's head and body may take, and how large its head may be."""

    header_seconds: float
    body_seconds: float
    max_header_bytes: int


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `Limits`; `protocol(limits)` makes one for uvicorn."""

    limits: Limits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes received while a head is incomplete
        self._in_head = True
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_seconds, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # whatever else the caller sends is dropped until the close
        super().data_received(data)
        if self._in_head and self.parser is not None:
            # A head still incomplete after this read: httptools buffers a header's name and
            # value until it ends, so an endless one is cut off here, one read past the bound.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, "headers")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        if self._deadline is None and not self._refused:  # a keep-alive connection's next request
            self._arm(self.limits.header_seconds, "headers")

    def on_headers_complete(self) -> None:
        if self._refused:
            return  # refused earlier in this read: start nothing more
        self._in_head = False
        self._disarm()
        size = len(self.url)
        body = False
        for name, value in self.headers:
            size += len(name) + len(value) + 4
            if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                body = True
        if size > self.limits.max_header_bytes:
            self._refuse(431, "headers")
            return
        super().on_headers_complete()
        if body:
            self._arm(self.limits.body_seconds, "body")

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return  # refused earlier in this read: the timer is the linger's close, kept
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str) -> None:
        self._deadline = None
        self._refuse(408, what)

    def _refuse(self, status: int, what: str) -> None:
        """Answer `status` (unless an answer has begun), then end the connection: this side at
        once, the whole of it once the caller has stopped sending (or `LINGER_SECONDS` on)."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._disarm()
        # The request's cycle; uvicorn keeps a keep-alive connection's last one, answered, until
        # the next head ends: that is not this request's.
        cycle = self.cycle if self.cycle is not None and not self.cycle.response_complete else None
        if cycle is None or not cycle.response_started:
            self.transport.write(self._refusal(status, what))
        log.debug("refused a request (%d): its %s were too slow or too large", status, what)
        if cycle is not None:  # the request's task hears of it as a hang-up
            cycle.disconnected = True
            cycle.message_event.set()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._deadline = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def _refusal(self, status: int, what: str) -> bytes:
        limits = self.limits
        seconds = limits.header_seconds if what == "headers" else limits.body_seconds
        error = (
            errors.request_timeout(what, seconds)
            if status == 408
            else errors.headers_too_large(limits.max_header_bytes)
        )
        body = error.body()
        head = [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            *(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in error.headers.items()),
            b"\r\n",
        ]
        return b"".join(head) + body

    def eof_received(self) -> None:
        if self._refused:
            self.transport.close()  # the caller is done sending: the linger is over
        super().eof_received()


def protocol(limits: Limits) -> type[GuardedProtocol]:
    """A `GuardedProtocol` class bound to `limits`, for `uvicorn.Config(http=...)`."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})
