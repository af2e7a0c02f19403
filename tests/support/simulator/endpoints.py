"""The ``/v1`` endpoint handlers: embeddings, chat and legacy completions, models, echo.

Each handler is synchronous and only computes: it validates the request with :mod:`.protocol`,
builds the answer from :mod:`.answers` and returns it, whole or as SSE events. The pipeline in
:mod:`.pipeline` owns everything else (recording, faults, latency, writing), and
:mod:`.server` routes each path to its handler. Files and Batch API jobs are in :mod:`.batches`.
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson
from aiohttp import web

from tests.support.simulator import answers, protocol, state


@dataclass
class Ctx:
    """What the pipeline hands an endpoint handler."""

    request: web.Request
    raw: bytes
    body: Any
    config: state.SimConfig
    call: state.CallRecord
    request_id: str
    shared: state.State
    """The simulator's state, for the stateful endpoints (files, batches)."""


@dataclass
class Sse:
    """A streamed answer, computed up front and written by the pipeline after the latency."""

    events: list[bytes]


Reply: TypeAlias = web.Response | Sse
# Handlers are synchronous and only compute: the pipeline owns every wait and every write.
Handler: TypeAlias = Callable[[Ctx], Reply]


def _random_suffix(body: Mapping[str, Any], config: state.SimConfig) -> bool:
    temperature = body.get("temperature")
    return (
        config.random_suffix
        and body.get("seed") is None
        and isinstance(temperature, int | float)
        and temperature > 0
    )


def embeddings(ctx: Ctx) -> Reply:
    body, config = protocol.require_object(ctx.body), ctx.config
    model = protocol.require_model(body, config)
    if "input" not in body:
        raise protocol.ApiError(400, "'input' is a required property", param="input")
    items = protocol.input_items(body["input"])
    if not items or any(len(item) == 0 for item in items):
        raise protocol.invalid_input()
    if len(items) > config.max_inputs:
        raise protocol.invalid_input(f"at most {config.max_inputs} inputs per request")
    tokens = [answers.count_tokens(item) for item in items]
    protocol.check_token_limits(tokens, config)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise protocol.ApiError(
            400, f"Invalid value for 'encoding_format': {encoding!r}.", param="encoding_format"
        )
    dims = protocol.positive_int(
        body, "dimensions", config.default_dimensions, config.max_dimensions
    )
    assert dims is not None
    encode = answers.embedding_base64 if encoding == "base64" else answers.embedding_vector
    data = [
        {"object": "embedding", "index": i, "embedding": encode(model, item, dims)}
        for i, item in enumerate(items)
    ]
    if config.shuffle_embeddings:
        random.shuffle(data)
    total = sum(tokens)
    ctx.call.usage = {"prompt_tokens": total, "total_tokens": total}
    return protocol.json_response(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        },
        request_id=ctx.request_id,
    )


def chat(ctx: Ctx) -> Reply:
    body, config = protocol.require_object(ctx.body), ctx.config
    model = protocol.require_model(body, config)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise protocol.ApiError(400, "'messages' must be a non-empty array.", param="messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise protocol.ApiError(
            400, "Each message must be an object with a 'role'.", param="messages"
        )
    n = protocol.positive_int(body, "n", 1, 128) or 1
    stream = body.get("stream") is True
    include_usage = protocol.stream_usage_flag(body, stream)
    limit = protocol.positive_int(body, "max_completion_tokens", None, 1 << 20)
    limit = limit or protocol.positive_int(body, "max_tokens", None, 1 << 20)

    user_turns = [m for m in messages if m["role"] == "user"] or messages
    quoted = answers.preview(protocol.message_text(user_turns[-1]))
    base = f"Echo: {quoted} [{answers.digest(answers.semantic_bytes(body))}]"
    randomise = _random_suffix(body, config)
    replies = [answers.truncate_words(answers.variant(base, j, randomise), limit) for j in range(n)]
    prompt_tokens = sum(answers.count_tokens(protocol.message_text(m)) for m in messages)
    completion_tokens = sum(answers.count_tokens(text) for text, _ in replies)
    usage = ctx.call.usage = answers.usage(prompt_tokens, completion_tokens, detailed=True)
    head = {
        "id": f"chatcmpl-sim{ctx.call.seq:010d}",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": answers.SYSTEM_FINGERPRINT,
    }
    if not stream:
        choices: list[dict[str, Any]] = [
            {
                "index": j,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish,
            }
            for j, (text, finish) in enumerate(replies)
        ]
        payload = {**head, "object": "chat.completion", "choices": choices, "usage": usage}
        return protocol.json_response(payload, request_id=ctx.request_id)

    chunk_head = {**head, "object": "chat.completion.chunk"}
    if include_usage:  # the real API adds "usage": null to every chunk only in this case
        chunk_head["usage"] = None

    def chunk(j: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": j, "delta": delta, "logprobs": None, "finish_reason": finish}
        return protocol.sse({**chunk_head, "choices": [choice]})

    pieces = [answers.split_pieces(text, config.words_per_chunk) for text, _ in replies]
    events = [chunk(j, {"role": "assistant", "content": "", "refusal": None}) for j in range(n)]
    for k in range(max(map(len, pieces))):  # interleave choices like the real API does
        events.extend(chunk(j, {"content": p[k]}) for j, p in enumerate(pieces) if k < len(p))
    events.extend(chunk(j, {}, finish) for j, (_, finish) in enumerate(replies))
    if include_usage:
        events.append(protocol.sse({**chunk_head, "choices": [], "usage": usage}))
    return Sse(events)


def completions(ctx: Ctx) -> Reply:
    body, config = protocol.require_object(ctx.body), ctx.config
    model = protocol.require_model(body, config)
    if "prompt" not in body:
        raise protocol.ApiError(400, "'prompt' is a required property", param="prompt")
    prompts = protocol.input_items(body["prompt"])
    if not prompts or any(isinstance(p, list) and not p for p in prompts):
        raise protocol.ApiError(
            400, "Invalid 'prompt': expected a non-empty string or array.", param="prompt"
        )
    if len(prompts) > config.max_inputs:
        raise protocol.ApiError(
            400, f"Invalid 'prompt': at most {config.max_inputs} prompts.", param="prompt"
        )
    prompt_tokens = [answers.count_tokens(p) for p in prompts]
    protocol.check_token_limits(prompt_tokens, config)
    n = protocol.positive_int(body, "n", 1, 128) or 1
    stream = body.get("stream") is True
    include_usage = protocol.stream_usage_flag(body, stream)
    limit = protocol.positive_int(body, "max_tokens", None, 1 << 20)
    echo = body.get("echo") is True
    randomise = _random_suffix(body, config)

    # The digest of each prompt ignores its neighbours, so splitting or merging prompt arrays
    # (what a batching proxy does) never changes a prompt's answer.
    shared = answers.semantic_bytes(body, also_skip="prompt")
    choices: list[dict[str, Any]] = []
    for i, prompt in enumerate(prompts):
        prompt_digest = answers.digest(shared + orjson.dumps(prompt))
        base = f"Completion of: {answers.preview(prompt)} [{prompt_digest}]"
        for j in range(n):
            text, finish = answers.truncate_words(answers.variant(base, j, randomise), limit)
            if echo and isinstance(prompt, str):
                text = prompt + text
            choices.append(
                {"text": text, "index": i * n + j, "logprobs": None, "finish_reason": finish}
            )
    if config.shuffle_completions:
        random.shuffle(choices)
    completion_tokens = sum(answers.count_tokens(c["text"]) for c in choices)
    usage = ctx.call.usage = answers.usage(sum(prompt_tokens), completion_tokens)
    head = {
        "id": f"cmpl-sim{ctx.call.seq:010d}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": answers.SYSTEM_FINGERPRINT,
    }
    if not stream:
        return protocol.json_response(
            {**head, "choices": choices, "usage": usage}, request_id=ctx.request_id
        )

    if include_usage:
        head["usage"] = None

    def chunk(index: int, text: str, finish: str | None = None) -> bytes:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
        return protocol.sse({**head, "choices": [choice]})

    pieces = [answers.split_pieces(c["text"], config.words_per_chunk) for c in choices]
    events: list[bytes] = []
    for k in range(max(map(len, pieces))):
        events.extend(
            chunk(c["index"], p[k]) for c, p in zip(choices, pieces, strict=True) if k < len(p)
        )
    events.extend(chunk(c["index"], "", c["finish_reason"]) for c in choices)
    if include_usage:
        events.append(protocol.sse({**head, "choices": [], "usage": usage}))
    return Sse(events)


def list_models(ctx: Ctx) -> Reply:
    data = [answers.model_object(m) for m in ctx.config.models]
    return protocol.json_response({"object": "list", "data": data}, request_id=ctx.request_id)


def get_model(ctx: Ctx) -> Reply:
    model_id = ctx.request.match_info["model_id"]
    if model_id not in ctx.config.models:
        raise protocol.model_not_found(model_id)
    return protocol.json_response(answers.model_object(model_id), request_id=ctx.request_id)


def echo(ctx: Ctx) -> Reply:
    """Catch-all: show the request exactly as it arrived, for pass-through tests."""
    request = ctx.request
    raw = ctx.raw
    payload = {
        "method": request.method,
        "path": request.path,
        "query": request.query_string,
        "query_params": {k: request.query.getall(k) for k in request.query},
        "headers": ctx.call.headers,
        "raw_headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body": raw.decode("utf-8", "replace"),
        "body_base64": base64.b64encode(raw).decode(),
        "json": None if ctx.body is protocol.INVALID_JSON else ctx.body,
    }
    return protocol.json_response(payload, request_id=ctx.request_id)
