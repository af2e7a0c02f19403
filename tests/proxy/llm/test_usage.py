"""Token usage taken from whole bodies and from SSE streams split at arbitrary points."""

from __future__ import annotations

import orjson
import pytest

from sluice.proxy.llm import usage

CHAT = orjson.dumps(
    {
        "choices": [{"message": {"content": "a usage word in text"}}],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 3,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
)


def test_usage_of_a_chat_body() -> None:
    assert usage.from_body(CHAT) == (12, 3)


def test_usage_of_an_embeddings_body_has_no_completion_tokens() -> None:
    body = orjson.dumps({"data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}})
    assert usage.from_body(body) == (8, 0)


def test_a_body_without_usage_has_none() -> None:
    assert usage.from_body(b'{"data": []}') is None
    assert usage.from_body(b'{"usage": null}') is None


def test_the_last_usage_object_counts_past_a_null_one_after_it() -> None:
    body = b'{"a": {"usage": {"prompt_tokens": 1}}, "usage": {"prompt_tokens": 2}, "usage": null}'
    assert usage.from_body(body) == (2, 0)


STREAM = (
    b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 3, 17, len(STREAM)])
def test_stream_usage_is_found_however_the_stream_is_split(size: int) -> None:
    scanner = usage.StreamScanner()
    for start in range(0, len(STREAM), size):
        scanner.feed(STREAM[start : start + size])
    assert scanner.usage == (5, 7)


def test_a_stream_cut_before_its_usage_chunk_has_none() -> None:
    scanner = usage.StreamScanner()
    scanner.feed(STREAM[: STREAM.index(b'data: {"choices":[]')])
    assert scanner.usage is None
