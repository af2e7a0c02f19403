"""The access log's lines, as log shippers read them."""

from __future__ import annotations

import io
import time

import orjson
import pytest

from sluice.proxy import logs

MOMENT = 1764690300.0185  # 2025-12-02T15:45:00.018Z
Answered = tuple[str, str, str, int, float, str | None, str | None]
"""`AccessLog.add`'s arguments: request id, route, method, status, seconds, cache, batch."""


def lines(form: str, monkeypatch: pytest.MonkeyPatch, *requests: Answered) -> list[str]:
    monkeypatch.setattr(time, "time", lambda: MOMENT)
    stream = io.StringIO()
    access = logs.AccessLog(form, stream)
    for request in requests:
        access.add(*request)
    access.flush()
    return stream.getvalue().splitlines()


async def test_a_json_access_line_is_one_object_with_every_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hit: Answered = ("9f-1", "chat_completions", "POST", 200, 0.000123456, "hit", None)
    batched: Answered = ("b", "embeddings", "POST", 200, 12.3456789, None, "b-7")
    first, second = lines("json", monkeypatch, hit, batched)
    assert first == (
        '{"time":"2025-12-02T15:45:00.018Z","level":"info","logger":"sluice.access",'
        '"message":"POST chat_completions 200 0.1ms","request_id":"9f-1",'
        '"route":"chat_completions","method":"POST","status":200,'
        '"duration_seconds":0.000123,"cache":"hit","batch":null}'
    )
    assert orjson.loads(second) | {"time": None} == {
        "time": None,
        "level": "info",
        "logger": "sluice.access",
        "message": "POST embeddings 200 12345.7ms",
        "request_id": "b",
        "route": "embeddings",
        "method": "POST",
        "status": 200,
        "duration_seconds": 12.345679,
        "cache": None,
        "batch": "b-7",
    }


async def test_a_text_access_line_spells_a_missing_field_as_a_dash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (line,) = lines("text", monkeypatch, ("x", "not_found", "OTHER", 404, 0.0, "", None))
    stamp, rest = line[:23], line[24:]
    assert stamp.endswith(",018")
    assert rest == (
        "INFO sluice.access: OTHER not_found 404 0.0ms request_id=x route=not_found"
        " method=OTHER status=404 duration_seconds=0.0 cache= batch=-"
    )
