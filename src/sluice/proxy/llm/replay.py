"""Streams and whole answers, one from the other: SSE recorded into JSON, JSON replayed as SSE.

The response cache (`responses.py`) stores one canonical form per request: the answer as the
non-streamed API returns it (`chat.completion` / `text_completion` JSON). A non-streamed miss is
stored as received; a streamed miss is assembled by `Recorder` from its chunks as they pass
through. A hit is returned as that JSON, or, for a streamed request, replayed by `replay()` as
SSE: per choice one chunk with the whole message (role, content, refusal, tool calls, logprobs),
one chunk with its `finish_reason`, then the usage chunk if `stream_options.include_usage` asked
for it, then `data: [DONE]`. The `openai` client assembles exactly the text it would have.

Why the JSON form and not the recorded bytes: one entry then serves both shapes, a streamed hit
costs one small JSON parse, and the stored form is what most callers read. The one thing a
stream may lack is `usage` (sent only with `include_usage`); such an entry carries no usage
flag, and a request that needs usage treats it as a miss and stores the fuller answer.

`Recorder` refuses (stores nothing) whatever it does not fully understand: a stream that never
reached `[DONE]`, an error event, a choice without `finish_reason`, an unknown non-null delta field.
"""

from __future__ import annotations

from typing import Any

import orjson

from sluice.proxy.http import sse

DONE = b"data: [DONE]\n\n"
_CHAT_DELTA_FIELDS = frozenset({"role", "content", "refusal", "tool_calls", "function_call"})
_HEAD_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")
_LOGPROB_LISTS = ("content", "refusal", "tokens", "token_logprobs", "top_logprobs", "text_offset")


class Recorder:
    """Feed it an SSE stream chunk by chunk (split anywhere); `result()` is the JSON answer."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.done = False
        self.spoiled = False
        self.usage: dict[str, Any] | None = None
        self._lines = sse.LineBuffer()
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}

    def feed(self, chunk: bytes) -> None:
        for line in self._lines.feed(chunk).split(b"\n"):
            if line.startswith(b"data:") and not self.spoiled:
                self._data(line[5:].strip())

    def result(self) -> bytes | None:
        """The assembled answer, or None when the stream is not one to store."""
        if not self.done or self.spoiled or not self._choices:
            return None
        choices = [self._choices[i] for i in sorted(self._choices)]
        if any(c["finish_reason"] is None for c in choices):
            return None
        build = _chat_choice if self.kind == "chat" else _text_choice
        answer: dict[str, Any] = {
            "id": self._head.get("id"),
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": self._head.get("created"),
            "model": self._head.get("model"),
            "choices": [build(c) for c in choices],
        }
        for name in ("system_fingerprint", "service_tier"):
            if self._head.get(name) is not None:
                answer[name] = self._head[name]
        if self.usage is not None:
            answer["usage"] = self.usage
        return orjson.dumps(answer)

    def _data(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.spoiled = True
            return
        if not isinstance(event, dict) or "error" in event or self.done:
            self.spoiled = True
            return
        for name in _HEAD_FIELDS:
            if event.get(name) is not None:
                self._head[name] = event[name]
        if event.get("usage") is not None:
            self.usage = event["usage"]
        for choice in event.get("choices") or ():
            self._choice(choice)

    def _choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        state = self._choices.setdefault(index, {"index": index, "finish_reason": None})
        if choice.get("finish_reason") is not None:
            state["finish_reason"] = choice["finish_reason"]
        if choice.get("logprobs") is not None:
            _merge_logprobs(state, choice["logprobs"])
        if self.kind == "chat":
            self._delta(state, choice.get("delta") or {})
        elif choice.get("text"):
            state.setdefault("text", []).append(choice["text"])

    def _delta(self, state: dict[str, Any], delta: dict[str, Any]) -> None:
        if any(v is not None for k, v in delta.items() if k not in _CHAT_DELTA_FIELDS):
            self.spoiled = True
            return
        if delta.get("role") is not None:
            state["role"] = delta["role"]
        for name in ("content", "refusal"):
            if delta.get(name) is not None:
                state.setdefault(name, []).append(delta[name])
        for call in delta.get("tool_calls") or ():
            _merge_tool_call(state.setdefault("tool_calls", {}), call)
        if delta.get("function_call") is not None:
            _merge_function(state.setdefault("function_call", {}), delta["function_call"])

    def __repr__(self) -> str:
        return (
            f"<Recorder {self.kind} choices={len(self._choices)} done={self.done} "
            f"spoiled={self.spoiled}>"
        )


def _merge_logprobs(state: dict[str, Any], logprobs: dict[str, Any]) -> None:
    merged = state.setdefault("logprobs", {})
    for name in _LOGPROB_LISTS:
        if logprobs.get(name) is not None:
            merged.setdefault(name, []).extend(logprobs[name])


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    call = calls.setdefault(delta.get("index", 0), {"function": {}})
    for name in ("id", "type"):
        if delta.get(name) is not None:
            call[name] = delta[name]
    _merge_function(call["function"], delta.get("function") or {})


def _merge_function(function: dict[str, Any], delta: dict[str, Any]) -> None:
    if delta.get("name") is not None:
        function["name"] = function.get("name", "") + delta["name"]
    if delta.get("arguments") is not None:
        function["arguments"] = function.get("arguments", "") + delta["arguments"]


def _chat_choice(state: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": state.get("role", "assistant"),
        "content": "".join(state["content"]) if "content" in state else None,
        "refusal": "".join(state["refusal"]) if "refusal" in state else None,
    }
    if "tool_calls" in state:
        calls = state["tool_calls"]
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    if "function_call" in state:
        message["function_call"] = state["function_call"]
    return {
        "index": state["index"],
        "message": message,
        "logprobs": state.get("logprobs"),
        "finish_reason": state["finish_reason"],
    }


def _text_choice(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "text": "".join(state.get("text", ())),
        "index": state["index"],
        "logprobs": state.get("logprobs"),
        "finish_reason": state["finish_reason"],
    }


def replay(kind: str, body: bytes, include_usage: bool) -> bytes:
    """The SSE stream a streamed request would have received for the stored answer `body`."""
    answer = orjson.loads(body)
    head: dict[str, Any] = {name: answer[name] for name in _HEAD_FIELDS if name in answer}
    head["object"] = "chat.completion.chunk" if kind == "chat" else "text_completion"
    if include_usage:  # the API adds `usage: null` to every chunk only in this case (FACTS.md)
        head["usage"] = None
    split = _chat_chunks if kind == "chat" else _text_chunks
    events = [
        b"data: " + orjson.dumps({**head, "choices": [part]}) + b"\n\n"
        for choice in answer["choices"]
        for part in split(choice)
    ]
    if include_usage:
        usage = {**head, "choices": [], "usage": answer["usage"]}
        events.append(b"data: " + orjson.dumps(usage) + b"\n\n")
    events.append(DONE)
    return b"".join(events)


def _chat_chunks(choice: dict[str, Any]) -> list[dict[str, Any]]:
    message = choice["message"]
    delta: dict[str, Any] = {
        "role": message.get("role", "assistant"),
        "content": message.get("content"),
    }
    if message.get("refusal") is not None:
        delta["refusal"] = message["refusal"]
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
    if message.get("function_call") is not None:
        delta["function_call"] = message["function_call"]
    index = choice["index"]
    return [
        {"index": index, "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None},
        {"index": index, "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]},
    ]


def _text_chunks(choice: dict[str, Any]) -> list[dict[str, Any]]:
    index = choice["index"]
    return [
        {
            "text": choice["text"],
            "index": index,
            "logprobs": choice.get("logprobs"),
            "finish_reason": None,
        },
        {"text": "", "index": index, "logprobs": None, "finish_reason": choice["finish_reason"]},
    ]
