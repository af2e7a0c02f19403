"""The proxy's logs: plain text or one JSON object a line, and the access log line of a request.

`--log-format json` (the image's default, through `SLUICE_LOG_FORMAT`) makes every record one
JSON object: `time`, `level`, `logger`, `message`, the fields a record carries in `fields` (the
access log's: request id, route, method, status, duration, cache result, batch id) and the
traceback, if any, as one string. Log shippers then need no parsing rules.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, TextIO

import orjson

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

ACCESS = "sluice.access"
"""The access log's `logger` name; its lines are written by `AccessLog`, not by `logging`."""


class JSONFormatter(logging.Formatter):
    """One JSON object a line; a record's `fields` (from `extra`) become its keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def iso_time(created: float) -> str:
    """RFC 3339 in UTC with milliseconds: `2026-12-02T13:40:05.123Z`."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


def configure(level: str, form: str) -> None:
    """Send every record (uvicorn's too) to stderr, as text or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's loggers keep handlers of their own unless told otherwise; route them through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


class AccessLog:
    """The access log: one line per answered request, written in bulk.

    Not through `logging`: a record there costs ~17 µs (a LogRecord, a lock, a write and a flush
    per line), a third of a cache hit. Lines are formatted here (~2 µs) and written together a
    moment later (`FLUSH_SECONDS`), or at once past `FLUSH_BYTES`; `flush()` at shutdown.
    """

    FLUSH_SECONDS = 0.1
    FLUSH_BYTES = 64 * 1024

    def __init__(self, form: str, stream: TextIO | None = None) -> None:
        self.json = form == "json"
        self.stream = stream
        self._lines: list[str] = []
        self._size = 0
        self._second = -1
        self._stamp = ""

    def add(
        self,
        request_id: str,
        route: str,
        method: str,
        status: int,
        duration: float,
        cache: str | None,
        batch: str | None,
    ) -> None:
        """One answered request's line: its fields (`duration` in seconds) spelt out in one
        literal for each format rather than gathered into a dict and merged (~15% of a line)."""
        now = time.time()
        duration = round(duration, 6)
        message = f"{method} {route} {status} {duration * 1000:.1f}ms"
        if self.json:
            line = orjson.dumps({
                "time": self.stamp(now),
                "level": "info",
                "logger": ACCESS,
                "message": message,
                "request_id": request_id,
                "route": route,
                "method": method,
                "status": status,
                "duration_seconds": duration,
                "cache": cache,
                "batch": batch,
            }).decode() + "\n"  # fmt: skip
        else:
            line = (
                f"{self.stamp(now)} INFO {ACCESS}: {message} request_id={request_id} "
                f"route={route} method={method} status={status} duration_seconds={duration} "
                f"cache={'-' if cache is None else cache} batch={'-' if batch is None else batch}\n"
            )
        if not self._lines:
            asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)
        self._lines.append(line)
        self._size += len(line)
        if self._size > self.FLUSH_BYTES:
            self.flush()

    def stamp(self, now: float) -> str:
        """The line's time, as the other records spell it; the whole second formatted once."""
        second = int(now)
        if second != self._second:
            moment = time.gmtime(second) if self.json else time.localtime(second)
            form = "%Y-%m-%dT%H:%M:%S" if self.json else "%Y-%m-%d %H:%M:%S"
            self._second, self._stamp = second, time.strftime(form, moment)
        millis = int(now % 1 * 1000)
        return f"{self._stamp}.{millis:03d}Z" if self.json else f"{self._stamp},{millis:03d}"

    def flush(self) -> None:
        if not self._lines:
            return
        stream = self.stream or sys.stderr
        stream.write("".join(self._lines))
        stream.flush()
        self._lines.clear()
        self._size = 0
