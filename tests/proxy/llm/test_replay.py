"""SSE record and replay: a stream becomes the stored JSON answer, which becomes a stream again."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from sluice.proxy.llm import replay

HEAD = {"id": "chatcmpl-1", "created": 1700000000, "model": "gpt-4o-mini"}
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def sse(*events: dict[str, Any], done: bool = True) -> bytes:
    body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    return body + (replay.DONE if done else b"")


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**HEAD, "object": "chat.completion.chunk", "choices": [choice], **extra}


CHAT_STREAM = sse(
    chunk({"role": "assistant", "content": ""}, usage=None),
    chunk({"content": "Hello"}, usage=None),
    chunk({"content": " world"}, usage=None),
    chunk({}, "stop", usage=None),
    {**HEAD, "object": "chat.completion.chunk", "choices": [], "usage": USAGE},
)


def record(kind: str, stream: bytes, piece: int = 7) -> bytes | None:
    recorder = replay.Recorder(kind)
    for start in range(0, len(stream), piece):
        recorder.feed(stream[start : start + piece])
    return recorder.result()


def parse_chat_stream(stream: bytes) -> list[ChatCompletionChunk]:
    assert stream.endswith(replay.DONE)
    events = stream[: -len(replay.DONE)].split(b"\n\n")
    return [ChatCompletionChunk.model_validate_json(e.removeprefix(b"data: ")) for e in events if e]


@pytest.mark.parametrize("piece", [1, 3, 64, 10_000])
def test_a_chat_stream_split_anywhere_records_as_the_non_streamed_answer(piece: int) -> None:
    body = record("chat", CHAT_STREAM, piece)
    assert body is not None
    answer = ChatCompletion.model_validate_json(body)
    assert answer.choices[0].message.content == "Hello world"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.total_tokens == 7
    assert answer.id == "chatcmpl-1"
    assert answer.object == "chat.completion"


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_replayed_chat_answer_parses_to_the_same_text_and_usage(include_usage: bool) -> None:
    body = record("chat", CHAT_STREAM)
    assert body is not None
    chunks = parse_chat_stream(replay.replay("chat", body, include_usage))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usages = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usages) == 1
        assert usages[0].total_tokens == 7
        assert chunks[-1].choices == []  # the usage chunk comes last, with no choices
    else:
        assert usages == []


def test_tool_calls_and_logprobs_survive_the_round_trip() -> None:
    logprob = {"token": "x", "logprob": -0.1, "bytes": [120], "top_logprobs": []}
    stream = sse(
        chunk({"role": "assistant", "content": None}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_", "arguments": ""},
                    }
                ]
            }
        ),
        chunk(
            {"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": '{"a":'}}]}
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    }
                ]
            }
        ),
        {
            **chunk({}, "tool_calls"),
            "choices": [
                {
                    "index": 0,
                    "delta": {},
                    "logprobs": {"content": [logprob]},
                    "finish_reason": "tool_calls",
                }
            ],
        },
    )
    body = record("chat", stream)
    assert body is not None
    message = ChatCompletion.model_validate_json(body).choices[0].message
    assert message.tool_calls is not None
    calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls]  # type: ignore[union-attr]
    assert calls == [("call_1", "get_weather", '{"a":1}'), ("call_2", "f", "{}")]
    replayed = parse_chat_stream(replay.replay("chat", body, include_usage=False))
    deltas = [d for c in replayed for d in (c.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.function.arguments) for d in deltas] == [(0, '{"a":1}'), (1, "{}")]  # type: ignore[union-attr]
    assert any(c.choices[0].logprobs for c in replayed)


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(CHAT_STREAM[: -len(replay.DONE)], id="no-done"),
        pytest.param(CHAT_STREAM[:100], id="cut-mid-event"),
        pytest.param(sse(chunk({"content": "Hi"})), id="no-finish-reason"),
        pytest.param(
            sse(chunk({"content": "Hi"}), {"error": {"message": "boom"}}), id="error-event"
        ),
        pytest.param(sse(chunk({"audio": {"id": "a"}}, "stop")), id="unknown-delta-field"),
        pytest.param(b"data: {not json\n\n" + replay.DONE, id="bad-json"),
        pytest.param(replay.DONE, id="no-choices"),
        pytest.param(
            CHAT_STREAM + sse(chunk({"content": "late"}, "stop"), done=False), id="after-done"
        ),
    ],
)
def test_streams_that_are_incomplete_or_not_understood_are_not_stored(stream: bytes) -> None:
    assert record("chat", stream) is None


def text_chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
    choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [choice],
    }


def test_a_legacy_completions_stream_with_two_choices_round_trips() -> None:
    stream = sse(
        text_chunk(1, "Second"),
        text_chunk(0, "First"),
        text_chunk(0, " one"),
        text_chunk(0, "", "stop"),
        text_chunk(1, "", "length"),
    )
    body = record("completions", stream)
    assert body is not None
    answer = Completion.model_validate_json(body)
    assert [(c.index, c.text, c.finish_reason) for c in answer.choices] == [
        (0, "First one", "stop"),
        (1, "Second", "length"),
    ]
    events = replay.replay("completions", body, include_usage=False)[: -len(replay.DONE)]
    texts: dict[int, str] = {}
    for event in filter(None, events.split(b"\n\n")):
        # Not validated: the SDK builds stream chunks without validation, and the API's
        # non-final chunks carry `finish_reason: null`, which the `Completion` type refuses.
        for choice in orjson.loads(event.removeprefix(b"data: "))["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == {0: "First one", 1: "Second"}
