"""The proxy's logs: plain text or one JSON object a line, and the access log line of a request.

`--log-format json` (the image's default, through `SLUICE_LOG_FORMAT`) makes every record one
JSON object: `time`, `level`, `logger`, `message`, the fields a record carries in `fields` (the
access log's: request id, route, method, status, duration, cache result, batch id) and the
traceback, if any, as one string. Log shippers then need no parsing rules.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

access = logging.getLogger("sluice.access")


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
    """Send every record (uvicorn's too) to stderr, as text or JSON; the access log at INFO
    whatever `level` says (`ProxyApp(access_log=False)` turns it off)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's loggers keep handlers of their own unless told otherwise; route them through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    access.setLevel(logging.INFO)


def request_done(fields: dict[str, Any]) -> None:
    """The access log line of one answered request (`fields` as `ProxyApp.http` gathers them)."""
    access.info(
        "%s %s %s %.1fms",
        fields["method"],
        fields["route"],
        fields["status"],
        fields["duration_seconds"] * 1000,
        extra={"fields": fields},
    )
