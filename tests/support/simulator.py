"""OpenAI-compatible upstream simulator: the stand-in for the paid LLM API.

Every integration test and benchmark of the Sluice proxy talks to this simulator instead of a real
provider. It is test and bench support, not product code. It aims to be

* faithful: the official ``openai`` client (sync and async, streaming or not) parses every answer;
  request validation, error bodies and the SSE framing follow the public API reference;
* deterministic: embeddings depend only on (model, input, dimensions) and reply texts only on the
  request, so tests can predict every answer (:func:`embedding_vector`, :func:`count_tokens`);
* observable: every call is counted and logged (endpoint, inputs, Authorization header, body), so
  tests can assert how many upstream calls a batch of client requests produced and that no call
  mixed two tenants;
* controllable: latency, shuffled result order, error statuses, hangs, dropped connections and cut
  streams are injected through a Python API or over HTTP under ``/_sim/...`` (for benches that run
  in another process);
* cheap: one aiohttp app, orjson, no per-request heavy work, so benches measure the proxy.

Ways to run it:

* ``Simulator``: ``url = await sim.start()`` / ``await sim.stop()`` on the caller's event loop;
* ``SimulatorThread``: the same on a private event loop in a background thread (context manager),
  so sync tests, async tests and proxies in subprocesses can all reach it;
* the pytest plugin in this module: fixtures ``simulator`` (fresh state per test) and
  ``simulator_thread`` (one server per session, stable URL); enable with
  ``pytest_plugins = ["tests.support.simulator"]``;
* ``python -m tests.support.simulator --port 9000 --latency-ms 20`` for benches (prints the URL).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import itertools
import math
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, TypeAlias

import orjson
import pytest
from aiohttp import web

__all__ = [
    "DEFAULT_MODELS",
    "CallRecord",
    "Fault",
    "SimConfig",
    "SimStats",
    "Simulator",
    "SimulatorThread",
    "canonical_endpoint",
    "count_tokens",
    "embedding_base64",
    "embedding_vector",
    "main",
    "simulator",
    "simulator_thread",
]

Item: TypeAlias = str | list[int]
FaultMode: TypeAlias = Literal["status", "hang", "close", "reset", "cut"]

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
)
SYSTEM_FINGERPRINT = "fp_sluicesim"
_MODEL_CREATED = 1_700_000_000  # fixed so /v1/models answers are byte-identical between runs
_SSE_DONE = b"data: [DONE]\n\n"
_FAULT_MODES: frozenset[str] = frozenset({"status", "hang", "close", "reset", "cut"})
# Endpoint names used in counters, call records and fault targets; aliases accepted on input.
_ENDPOINTS = ("embeddings", "chat", "completions", "models", "files", "other")
_ENDPOINT_ALIASES: dict[str, str] = {
    **{name: name for name in _ENDPOINTS},
    "any": "any",
    "*": "any",
    "chat.completions": "chat",
    "chat/completions": "chat",
    "passthrough": "other",
}
# Request fields that must not change the reply text (transport and sampling knobs). Everything
# else (model, messages, max_tokens, tools, ...) feeds the reply digest, so a cache that forgets a
# parameter in its key serves a visibly different answer.
_NON_SEMANTIC_FIELDS: frozenset[str] = frozenset(
    {
        "stream",
        "stream_options",
        "n",
        "seed",
        "temperature",
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
    }
)
_PREVIEW_WORDS = 32  # echo at most this many words of the prompt, so replies stay small
_WORD_RE = re.compile(r"\s*\S+|\s+$")  # pieces whose concatenation is the original text
_INVALID_JSON = object()  # sentinel: the body was not valid JSON


# --------------------------------------------------------------------------------------------
# Pure, deterministic helpers (exported so tests can predict answers)
# --------------------------------------------------------------------------------------------


def count_tokens(item: str | Sequence[int]) -> int:
    """Simulated token count: words of a string (at least 1), or the length of a token array."""
    if isinstance(item, str):
        return max(1, len(item.split()))
    return len(item)


def _item_key(item: str | Sequence[int]) -> str | tuple[int, ...]:
    # Hashable form for the vector cache; strings and token arrays never collide (str vs tuple).
    return item if isinstance(item, str) else tuple(item)


@lru_cache(maxsize=65_536)
def _vector_bytes(model: str, key: str | tuple[int, ...], dimensions: int) -> bytes:
    """Little-endian float32 bytes of the vector: the single source for float and base64 output."""
    material = (
        b"s" + key.encode() if isinstance(key, str) else b"t" + ",".join(map(str, key)).encode()
    )
    digest = hashlib.shake_256(
        model.encode() + b"\0" + str(dimensions).encode() + b"\0" + material
    ).digest(2 * dimensions)
    # Each 16-bit word becomes k/1024 in [-1, 1]; then normalise to unit length like real models.
    raw = [(word % 2049 - 1024) / 1024 for word in struct.unpack(f"<{dimensions}H", digest)]
    norm = math.sqrt(sum(v * v for v in raw))
    if norm == 0.0:  # astronomically unlikely, but a zero vector cannot be normalised
        raw[0], norm = 1.0, 1.0
    # Packing to float32 rounds each value, so what we serve round-trips exactly through float32.
    return struct.pack(f"<{dimensions}f", *(v / norm for v in raw))


def embedding_vector(model: str, item: str | list[int], dimensions: int) -> list[float]:
    """The vector the simulator returns for ``item``: unit length, every value exact in float32.

    Depends only on (model, item, dimensions), never on the other inputs of the request, so a
    proxy that splits or merges batches must still hand each caller exactly this vector.
    """
    data = _vector_bytes(model, _item_key(item), dimensions)
    return list(struct.unpack(f"<{dimensions}f", data))


def embedding_base64(model: str, item: str | list[int], dimensions: int) -> str:
    """The ``encoding_format="base64"`` form of :func:`embedding_vector` (little-endian float32)."""
    return base64.b64encode(_vector_bytes(model, _item_key(item), dimensions)).decode()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:8]


def _split_pieces(text: str, words_per_piece: int) -> list[str]:
    """Split ``text`` into stream deltas whose concatenation is exactly ``text``."""
    words = _WORD_RE.findall(text)
    step = max(1, words_per_piece)
    return ["".join(words[i : i + step]) for i in range(0, len(words), step)]


def _truncate_words(text: str, limit: int | None) -> tuple[str, str]:
    """Cut ``text`` to ``limit`` simulated tokens; returns (text, finish_reason)."""
    if limit is None:
        return text, "stop"
    words = _WORD_RE.findall(text)
    if len(words) <= limit:
        return text, "stop"
    return "".join(words[:limit]), "length"


def _preview(item: Item) -> str:
    if isinstance(item, list):
        return f"<{len(item)} tokens>"
    words = item.split()
    return " ".join(words[:_PREVIEW_WORDS]) + (" ..." if len(words) > _PREVIEW_WORDS else "")


# --------------------------------------------------------------------------------------------
# Configuration, faults, records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """Behaviour knobs; immutable, replaced as a whole by ``configure`` (so reads need no lock)."""

    latency_ms: float = 0.0
    """Time from a /v1 call's arrival to its answer, error answers included (the simulator's own
    work is done inside this window, not added to it)."""
    per_input_latency_ms: float = 0.0
    """Added per embedding input / completion prompt, to model batch cost."""
    stream_chunk_delay_ms: float = 0.0
    """Pause between SSE events; 0 writes the whole stream at once."""
    words_per_chunk: int = 1
    """Words of reply text per streamed content delta."""
    default_dimensions: int = 16
    """Embedding size when the request has no ``dimensions`` (kept small on purpose)."""
    max_dimensions: int = 4096
    max_inputs: int = 2048
    max_input_tokens: int = 8192
    max_request_tokens: int = 300_000
    shuffle_embeddings: bool = False
    """Return embedding ``data`` in random order, to prove clients map results by ``index``."""
    shuffle_completions: bool = False
    """Return legacy completion ``choices`` in random order (streams interleave them randomly)."""
    random_suffix: bool = True
    """``temperature > 0`` without ``seed`` appends a random suffix (visible non-determinism).
    An absent temperature counts as deterministic, unlike the real API whose default is 1."""
    require_auth: bool = False
    """Answer 401 to /v1 calls without ``Authorization: Bearer <key>``."""
    api_keys: tuple[str, ...] = ()
    """With ``require_auth``: the only keys accepted (empty: any non-empty key)."""
    models: tuple[str, ...] = DEFAULT_MODELS
    strict_models: bool = False
    """Answer 404 ``model_not_found`` for models not in ``models``."""
    call_log_limit: int = 10_000
    """Keep at most this many call records (counters are unbounded); 0 disables the log."""

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with ``changes``; TypeError on unknown fields, ValueError on bad values."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown simulator setting(s): {', '.join(unknown)}")
        for name in ("api_keys", "models"):  # JSON gives lists; keep the config hashable
            if name in changes:
                changes[name] = tuple(changes[name])
        new = dataclasses.replace(self, **changes)
        if new.default_dimensions < 1 or new.words_per_chunk < 1 or new.call_log_limit < 0:
            raise ValueError("default_dimensions and words_per_chunk must be >= 1, log limit >= 0")
        return new

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Fault:
    """One queued fault: applies to the next ``count`` calls to ``endpoint`` (or any endpoint).

    Modes: ``status`` answers ``status`` with an OpenAI error body (and ``Retry-After`` if set);
    ``hang`` sleeps ``hang_seconds`` and then answers normally; ``close`` closes the connection
    without answering; ``reset`` does the same with a TCP RST; ``cut`` aborts a stream after
    ``after_chunks`` SSE events without ``[DONE]`` (a non-streamed answer is cut mid-body).
    """

    mode: FaultMode = "status"
    endpoint: str = "any"
    count: int = 1
    status: int = 500
    retry_after: str | None = None
    message: str | None = None
    error_type: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang_seconds: float = 0.0
    after_chunks: int = 0

    def __post_init__(self) -> None:
        if self.mode not in _FAULT_MODES:
            raise ValueError(f"fault mode must be one of {sorted(_FAULT_MODES)}")
        if self.count < 1:
            raise ValueError("fault count must be >= 1")
        self.endpoint = canonical_endpoint(self.endpoint)
        if self.retry_after is not None:
            self.retry_after = str(self.retry_after)  # JSON may give a number

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def canonical_endpoint(name: str) -> str:
    """Map ``"/v1/chat/completions"``, ``"chat.completions"``, ``"*"``... to a canonical name."""
    key = name.strip().lower().removeprefix("/").removeprefix("v1/").strip("/")
    try:
        return _ENDPOINT_ALIASES[key]
    except KeyError:
        raise ValueError(
            f"unknown endpoint {name!r}; use one of {sorted(_ENDPOINT_ALIASES)}"
        ) from None


@dataclass
class CallRecord:
    """One call that reached the simulator (recorded before validation, faults and latency)."""

    seq: int
    endpoint: str
    method: str
    path: str
    model: str | None
    n_inputs: int
    inputs: list[Any]
    """Embedding inputs / completion prompts as sent (normalised to a list); chat: [messages]."""
    authorization: str | None
    raw_headers: tuple[tuple[bytes, bytes], ...] = field(repr=False)
    """Headers as received; decoded on demand by :attr:`headers` (keeps the hot path cheap)."""
    body: Any
    """Parsed JSON body (None when empty; raw text when not JSON)."""
    stream: bool
    at: float
    fault: str | None = None
    status: int | None = None
    """HTTP status answered; None while in flight or when the connection was dropped."""

    @property
    def headers(self) -> dict[str, str]:
        """Request headers, names lower-cased, repeated headers joined with ", "."""
        headers: dict[str, str] = {}
        for raw_name, raw_value in self.raw_headers:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return headers

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["raw_headers"]  # bytes are not JSON; the decoded form says the same
        out["headers"] = self.headers
        return out


@dataclass(frozen=True)
class SimStats:
    """A consistent snapshot of the counters and the call log."""

    calls_by_endpoint: dict[str, int]
    inputs_by_endpoint: dict[str, int]
    total_calls: int
    calls: list[CallRecord]

    def calls_for(self, endpoint: str) -> list[CallRecord]:
        name = canonical_endpoint(endpoint)
        return [c for c in self.calls if name == "any" or c.endpoint == name]

    @property
    def authorizations(self) -> set[str | None]:
        return {c.authorization for c in self.calls}

    def to_dict(self, include_calls: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "calls_by_endpoint": self.calls_by_endpoint,
            "inputs_by_endpoint": self.inputs_by_endpoint,
            "total_calls": self.total_calls,
        }
        if include_calls:
            out["calls"] = [c.to_dict() for c in self.calls]
        return out


class _State:
    """Mutable shared state. Handlers run on the simulator loop while tests read and configure
    from other threads, so every mutation and snapshot holds ``lock`` (for microseconds only)."""

    def __init__(self, config: SimConfig) -> None:
        self.lock = threading.Lock()
        self.initial = config
        self.config = config
        self.faults: deque[Fault] = deque()
        self.calls: deque[CallRecord] = deque(maxlen=config.call_log_limit)
        self.calls_by_endpoint: Counter[str] = Counter()
        self.inputs_by_endpoint: Counter[str] = Counter()
        self.seq = itertools.count(1)

    def reset(self, keep_config: bool) -> None:
        with self.lock:
            if not keep_config:
                self.config = self.initial
            self.faults.clear()
            self.calls = deque(maxlen=self.config.call_log_limit)
            self.calls_by_endpoint.clear()
            self.inputs_by_endpoint.clear()

    def configure(self, changes: Mapping[str, Any]) -> SimConfig:
        with self.lock:
            self.config = self.config.replace(**changes)
            if self.calls.maxlen != self.config.call_log_limit:
                self.calls = deque(self.calls, maxlen=self.config.call_log_limit)
            return self.config

    def add_fault(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def take_fault(self, endpoint: str) -> Fault | None:
        """Consume one use of the first queued fault that targets ``endpoint``."""
        with self.lock:
            for fault in self.faults:
                if fault.endpoint in ("any", endpoint):
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                    return dataclasses.replace(fault, count=1)
            return None

    def record(self, call: CallRecord) -> None:
        with self.lock:
            self.calls_by_endpoint[call.endpoint] += 1
            self.inputs_by_endpoint[call.endpoint] += call.n_inputs
            self.calls.append(call)

    def snapshot(self) -> SimStats:
        with self.lock:
            return SimStats(
                calls_by_endpoint=dict(self.calls_by_endpoint),
                inputs_by_endpoint=dict(self.inputs_by_endpoint),
                total_calls=sum(self.calls_by_endpoint.values()),
                calls=list(self.calls),
            )

    def pending_faults(self) -> list[Fault]:
        with self.lock:
            return [dataclasses.replace(f) for f in self.faults]


# --------------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------------


class _ApiError(Exception):
    """An OpenAI-style error answer, raised from validation code and rendered by the pipeline."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


_DEFAULT_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", None),
    409: ("conflict", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
}


def _fault_error(fault: Fault) -> _ApiError:
    default_type, default_code = _DEFAULT_ERROR_TYPES.get(
        fault.status, ("server_error" if fault.status >= 500 else "invalid_request_error", None)
    )
    headers = dict(fault.headers)
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    return _ApiError(
        fault.status,
        fault.message or f"Simulated error {fault.status} (injected by the test).",
        error_type=fault.error_type or default_type,
        code=fault.code if fault.code is not None else default_code,
        headers=headers,
    )


def _invalid_input(detail: str = "") -> _ApiError:
    # The real API's wording for schema failures on `input`.
    return _ApiError(
        400,
        "'$.input' is invalid. Please check the API reference: "
        "https://platform.openai.com/docs/api-reference." + (f" ({detail})" if detail else ""),
        param="input",
    )


def _json_response(
    payload: Any,
    *,
    status: int = 200,
    request_id: str = "",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    all_headers = {"Content-Type": "application/json"}
    if request_id:
        all_headers["x-request-id"] = request_id
    if headers:
        all_headers.update(headers)
    return web.Response(body=orjson.dumps(payload), status=status, headers=all_headers)


def _error_response(err: _ApiError, request_id: str = "") -> web.Response:
    body = {
        "error": {
            "message": err.message,
            "type": err.error_type,
            "param": err.param,
            "code": err.code,
        }
    }
    return _json_response(body, status=err.status, request_id=request_id, headers=err.headers)


def _drop_connection(request: web.BaseRequest, *, rst: bool) -> web.Response:
    """Close the client's connection. aiohttp then fails to write the returned response with a
    ConnectionError, which it swallows quietly, so nothing else reaches the client."""
    transport = request.transport
    if transport is not None:
        if rst:  # SO_LINGER 0 makes close() send RST: the client sees ECONNRESET, not a clean EOF
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.close()  # close() (not abort()) flushes what was already written, e.g. chunks
    return web.Response(status=499)


def _positive_int(body: Mapping[str, Any], name: str, default: int | None, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise _ApiError(
            400, f"Invalid '{name}': expected an integer between 1 and {high}.", param=name
        )
    return value


def _is_token(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _input_items(value: object) -> list[Item] | None:
    """Normalise an embeddings ``input`` / completions ``prompt`` to a list of items.

    Accepts a string, a list of strings, a token array or a list of token arrays; None when the
    shape matches none of these (mixed lists, floats, objects).
    """
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return None
    if not value:
        return []
    if all(isinstance(x, str) for x in value):
        return list(value)
    if all(_is_token(x) for x in value):
        return [list(value)]
    if all(isinstance(x, list) and all(_is_token(t) for t in x) for x in value):
        return list(value)
    return None


def _message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text parts carry words
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _semantic_bytes(body: Mapping[str, Any], also_skip: str = "") -> bytes:
    """Canonical bytes of the fields that define the answer (see ``_NON_SEMANTIC_FIELDS``)."""
    kept = {k: v for k, v in body.items() if k not in _NON_SEMANTIC_FIELDS and k != also_skip}
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)


def _random_suffix(body: Mapping[str, Any], config: SimConfig) -> bool:
    temperature = body.get("temperature")
    return (
        config.random_suffix
        and body.get("seed") is None
        and isinstance(temperature, int | float)
        and temperature > 0
    )


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _stream_usage_flag(body: Mapping[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise _ApiError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if not isinstance(options, dict):
        raise _ApiError(
            400, "Invalid type for 'stream_options': expected an object.", param="stream_options"
        )
    return options.get("include_usage") is True


@dataclass
class _Ctx:
    """What the pipeline hands an endpoint handler."""

    request: web.Request
    raw: bytes
    body: Any
    config: SimConfig
    call: CallRecord
    request_id: str


@dataclass
class _Sse:
    """A streamed answer, computed up front and written by the pipeline after the latency."""

    events: list[bytes]


_Reply: TypeAlias = web.Response | _Sse
# Handlers are synchronous and only compute: the pipeline owns every wait and every write.
_Handler: TypeAlias = Callable[[_Ctx], _Reply]


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------


class Simulator:
    """The OpenAI-compatible server plus its control API.

    ``start``/``stop`` must run on the loop that serves it; every other method is thread-safe and
    synchronous, so tests on another thread (see :class:`SimulatorThread`) may call them directly.
    """

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        base = config or SimConfig()
        self._state = _State(base.replace(**overrides) if overrides else base)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._root: str | None = None
        self.app = self._make_app()

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 picks a free port); returns :attr:`url`."""
        # A short shutdown timeout: handlers parked in a "hang" fault must not delay stop().
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]  # the real port when port=0 asked for any free one
        self._runner = runner
        self._root = f"http://{host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def root_url(self) -> str:
        """``http://host:port`` (the control API lives under ``/_sim``)."""
        if self._root is None:
            raise RuntimeError("simulator not started")
        return self._root

    @property
    def url(self) -> str:
        """OpenAI base URL, ending in ``/v1`` (pass as ``base_url`` to the openai client)."""
        return self.root_url + "/v1"

    @property
    def port(self) -> int:
        return int(self.root_url.rsplit(":", 1)[1])

    # ---- control (thread-safe) ------------------------------------------------------------

    @property
    def config(self) -> SimConfig:
        return self._state.config

    @property
    def stats(self) -> SimStats:
        return self._state.snapshot()

    @property
    def calls(self) -> list[CallRecord]:
        return self._state.snapshot().calls

    def calls_for(self, endpoint: str) -> list[CallRecord]:
        return self._state.snapshot().calls_for(endpoint)

    def configure(self, **changes: Any) -> SimConfig:
        """Change settings (see :class:`SimConfig`); returns the new config."""
        return self._state.configure(changes)

    def reset(self, *, keep_config: bool = False) -> None:
        """Clear counters, the call log and queued faults; restore the initial config."""
        self._state.reset(keep_config)

    def add_fault(self, fault: Fault) -> None:
        self._state.add_fault(fault)

    def pending_faults(self) -> list[Fault]:
        return self._state.pending_faults()

    def fail_next(
        self,
        status: int = 500,
        *,
        count: int = 1,
        endpoint: str = "any",
        retry_after: float | str | None = None,
        message: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """The next ``count`` calls to ``endpoint`` answer ``status`` with an OpenAI error body."""
        self.add_fault(
            Fault(
                mode="status",
                endpoint=endpoint,
                count=count,
                status=status,
                retry_after=None if retry_after is None else str(retry_after),
                message=message,
                error_type=error_type,
                code=code,
                headers=dict(headers or {}),
            )
        )

    def hang_next(self, seconds: float, *, count: int = 1, endpoint: str = "any") -> None:
        """The next calls sleep ``seconds`` before answering normally (for timeout tests)."""
        self.add_fault(Fault(mode="hang", endpoint=endpoint, count=count, hang_seconds=seconds))

    def close_next(self, *, count: int = 1, endpoint: str = "any", reset: bool = False) -> None:
        """The next calls get their connection closed (``reset``: with RST) and no answer."""
        self.add_fault(Fault(mode="reset" if reset else "close", endpoint=endpoint, count=count))

    def cut_stream_next(self, after_chunks: int, *, count: int = 1, endpoint: str = "any") -> None:
        """The next streams stop after ``after_chunks`` SSE events, without ``[DONE]``."""
        self.add_fault(Fault(mode="cut", endpoint=endpoint, count=count, after_chunks=after_chunks))

    # ---- app ------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        # Big embedding batches (2048 inputs) exceed aiohttp's default 1 MiB body limit.
        app = web.Application(client_max_size=256 * 1024 * 1024)

        def route(
            endpoint: str, handler: _Handler
        ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            async def serve(request: web.Request) -> web.StreamResponse:
                return await self._serve(request, endpoint, handler)

            return serve

        app.router.add_post("/v1/embeddings", route("embeddings", self._embeddings))
        app.router.add_post("/v1/chat/completions", route("chat", self._chat))
        app.router.add_post("/v1/completions", route("completions", self._completions))
        app.router.add_get("/v1/models", route("models", self._list_models))
        app.router.add_get("/v1/models/{model_id:.+}", route("models", self._get_model))
        app.router.add_get("/v1/files", route("files", self._list_files))
        app.router.add_get("/_sim/stats", self._ctl_stats)
        app.router.add_get("/_sim/health", self._ctl_health)
        app.router.add_post("/_sim/reset", self._ctl_reset)
        app.router.add_post("/_sim/configure", self._ctl_configure)
        app.router.add_post("/_sim/fail", self._ctl_fail)
        # Last, so the specific routes win: everything else under /v1 is echoed back.
        app.router.add_route("*", "/v1/{tail:.*}", route("other", self._echo))
        return app

    async def _serve(
        self, request: web.Request, endpoint: str, handler: _Handler
    ) -> web.StreamResponse:
        """The pipeline every /v1 call goes through: record, fault, compute, wait, answer."""
        started = time.monotonic()
        config = self._state.config
        seq = next(self._ids)
        request_id = f"req_sim{seq:010d}"
        raw = await request.read()
        body = _parse_body(raw)
        call = _make_record(seq, endpoint, request, body, raw)
        self._state.record(call)
        fault = self._state.take_fault(endpoint)
        if fault is not None:
            call.fault = fault.mode
            if fault.mode in ("close", "reset"):
                return _drop_connection(request, rst=fault.mode == "reset")  # status stays None
        ctx = _Ctx(request, raw, body, config, call, request_id)
        try:
            reply = _compute(ctx, handler, fault)
        except _ApiError as err:
            reply = _error_response(err, request_id)
        # The answer is computed before waiting, and the wait is what remains of the latency,
        # so the simulator's own CPU time hides inside the configured latency instead of
        # adding to it (a burst of N requests would otherwise end N handler-times late).
        wait = (config.latency_ms + config.per_input_latency_ms * call.n_inputs) / 1000
        if fault is not None and fault.mode == "hang":
            wait += fault.hang_seconds
        remaining = started + wait - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)
        cut = fault.after_chunks if fault is not None and fault.mode == "cut" else None
        response: web.StreamResponse
        if isinstance(reply, _Sse):
            delay = config.stream_chunk_delay_ms / 1000
            response = await _stream(request, reply.events, request_id, delay, cut)
        elif cut is not None:
            response = await _truncated(request, reply)  # a "cut" that hit a non-streamed answer
        else:
            response = reply
        call.status = response.status
        return response

    # ---- endpoints ------------------------------------------------------------------------

    def _embeddings(self, ctx: _Ctx) -> _Reply:
        body, config = _require_object(ctx.body), ctx.config
        model = _require_model(body, config)
        if "input" not in body:
            raise _ApiError(400, "'input' is a required property", param="input")
        items = _input_items(body["input"])
        if not items or any(len(item) == 0 for item in items):
            raise _invalid_input()
        if len(items) > config.max_inputs:
            raise _invalid_input(f"at most {config.max_inputs} inputs per request")
        tokens = [count_tokens(item) for item in items]
        _check_token_limits(tokens, config)
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _ApiError(
                400, f"Invalid value for 'encoding_format': {encoding!r}.", param="encoding_format"
            )
        dims = _positive_int(body, "dimensions", config.default_dimensions, config.max_dimensions)
        assert dims is not None
        encode = embedding_base64 if encoding == "base64" else embedding_vector
        data = [
            {"object": "embedding", "index": i, "embedding": encode(model, item, dims)}
            for i, item in enumerate(items)
        ]
        if config.shuffle_embeddings:
            random.shuffle(data)
        total = sum(tokens)
        return _json_response(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": total, "total_tokens": total},
            },
            request_id=ctx.request_id,
        )

    def _chat(self, ctx: _Ctx) -> _Reply:
        body, config = _require_object(ctx.body), ctx.config
        model = _require_model(body, config)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(400, "'messages' must be a non-empty array.", param="messages")
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise _ApiError(400, "Each message must be an object with a 'role'.", param="messages")
        n = _positive_int(body, "n", 1, 128) or 1
        stream = body.get("stream") is True
        include_usage = _stream_usage_flag(body, stream)
        limit = _positive_int(body, "max_completion_tokens", None, 1 << 20)
        limit = limit or _positive_int(body, "max_tokens", None, 1 << 20)

        user_turns = [m for m in messages if m["role"] == "user"] or messages
        base = f"Echo: {_preview(_message_text(user_turns[-1]))} [{_digest(_semantic_bytes(body))}]"
        randomise = _random_suffix(body, config)
        replies = [_truncate_words(_variant(base, j, randomise), limit) for j in range(n)]
        prompt_tokens = sum(count_tokens(_message_text(m)) for m in messages)
        completion_tokens = sum(count_tokens(text) for text, _ in replies)
        usage = _usage(prompt_tokens, completion_tokens, detailed=True)
        head = {
            "id": f"chatcmpl-sim{ctx.call.seq:010d}",
            "created": int(time.time()),
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
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
            return _json_response(payload, request_id=ctx.request_id)

        chunk_head = {**head, "object": "chat.completion.chunk"}
        if include_usage:  # the real API adds "usage": null to every chunk only in this case
            chunk_head["usage"] = None

        def chunk(j: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": j, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**chunk_head, "choices": [choice]})

        pieces = [_split_pieces(text, config.words_per_chunk) for text, _ in replies]
        events = [chunk(j, {"role": "assistant", "content": "", "refusal": None}) for j in range(n)]
        for k in range(max(map(len, pieces))):  # interleave choices like the real API does
            events.extend(chunk(j, {"content": p[k]}) for j, p in enumerate(pieces) if k < len(p))
        events.extend(chunk(j, {}, finish) for j, (_, finish) in enumerate(replies))
        if include_usage:
            events.append(_sse({**chunk_head, "choices": [], "usage": usage}))
        return _Sse(events)

    def _completions(self, ctx: _Ctx) -> _Reply:
        body, config = _require_object(ctx.body), ctx.config
        model = _require_model(body, config)
        if "prompt" not in body:
            raise _ApiError(400, "'prompt' is a required property", param="prompt")
        prompts = _input_items(body["prompt"])
        if not prompts or any(isinstance(p, list) and not p for p in prompts):
            raise _ApiError(
                400, "Invalid 'prompt': expected a non-empty string or array.", param="prompt"
            )
        if len(prompts) > config.max_inputs:
            raise _ApiError(
                400, f"Invalid 'prompt': at most {config.max_inputs} prompts.", param="prompt"
            )
        prompt_tokens = [count_tokens(p) for p in prompts]
        _check_token_limits(prompt_tokens, config)
        n = _positive_int(body, "n", 1, 128) or 1
        stream = body.get("stream") is True
        include_usage = _stream_usage_flag(body, stream)
        limit = _positive_int(body, "max_tokens", None, 1 << 20)
        echo = body.get("echo") is True
        randomise = _random_suffix(body, config)

        # The digest of each prompt ignores its neighbours, so splitting or merging prompt arrays
        # (what a batching proxy does) never changes a prompt's answer.
        shared = _semantic_bytes(body, also_skip="prompt")
        choices: list[dict[str, Any]] = []
        for i, prompt in enumerate(prompts):
            base = f"Completion of: {_preview(prompt)} [{_digest(shared + orjson.dumps(prompt))}]"
            for j in range(n):
                text, finish = _truncate_words(_variant(base, j, randomise), limit)
                if echo and isinstance(prompt, str):
                    text = prompt + text
                choices.append(
                    {"text": text, "index": i * n + j, "logprobs": None, "finish_reason": finish}
                )
        if config.shuffle_completions:
            random.shuffle(choices)
        usage = _usage(sum(prompt_tokens), sum(count_tokens(c["text"]) for c in choices))
        head = {
            "id": f"cmpl-sim{ctx.call.seq:010d}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if not stream:
            return _json_response(
                {**head, "choices": choices, "usage": usage}, request_id=ctx.request_id
            )

        if include_usage:
            head["usage"] = None

        def chunk(index: int, text: str, finish: str | None = None) -> bytes:
            choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
            return _sse({**head, "choices": [choice]})

        pieces = [_split_pieces(c["text"], config.words_per_chunk) for c in choices]
        events: list[bytes] = []
        for k in range(max(map(len, pieces))):
            events.extend(
                chunk(c["index"], p[k]) for c, p in zip(choices, pieces, strict=True) if k < len(p)
            )
        events.extend(chunk(c["index"], "", c["finish_reason"]) for c in choices)
        if include_usage:
            events.append(_sse({**head, "choices": [], "usage": usage}))
        return _Sse(events)

    def _list_models(self, ctx: _Ctx) -> _Reply:
        data = [_model_object(m) for m in ctx.config.models]
        return _json_response({"object": "list", "data": data}, request_id=ctx.request_id)

    def _get_model(self, ctx: _Ctx) -> _Reply:
        model_id = ctx.request.match_info["model_id"]
        if model_id not in ctx.config.models:
            raise _model_not_found(model_id)
        return _json_response(_model_object(model_id), request_id=ctx.request_id)

    def _list_files(self, ctx: _Ctx) -> _Reply:
        payload: dict[str, Any] = {
            "object": "list",
            "data": [],
            "first_id": None,
            "last_id": None,
            "has_more": False,
        }
        return _json_response(payload, request_id=ctx.request_id)

    def _echo(self, ctx: _Ctx) -> _Reply:
        """Catch-all: show the request exactly as it arrived, for pass-through tests."""
        request = ctx.request
        raw = ctx.raw
        payload = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "query_params": {k: request.query.getall(k) for k in request.query},
            "headers": ctx.call.headers,
            "raw_headers": [
                [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers
            ],
            "body": raw.decode("utf-8", "replace"),
            "body_base64": base64.b64encode(raw).decode(),
            "json": None if ctx.body is _INVALID_JSON else ctx.body,
        }
        return _json_response(payload, request_id=ctx.request_id)

    # ---- control API ----------------------------------------------------------------------

    async def _ctl_health(self, request: web.Request) -> web.StreamResponse:
        return _json_response({"ok": True, "url": self.url})

    async def _ctl_stats(self, request: web.Request) -> web.StreamResponse:
        include_calls = request.query.get("calls", "1") not in ("0", "false", "no")
        payload = self.stats.to_dict(include_calls=include_calls)
        payload["config"] = self.config.to_dict()
        payload["pending_faults"] = [f.to_dict() for f in self.pending_faults()]
        return _json_response(payload)

    async def _ctl_reset(self, request: web.Request) -> web.StreamResponse:
        body = _parse_body(await request.read())
        self.reset(keep_config=isinstance(body, dict) and body.get("keep_config") is True)
        return _json_response({"ok": True, "config": self.config.to_dict()})

    async def _ctl_configure(self, request: web.Request) -> web.StreamResponse:
        body = _parse_body(await request.read())
        if not isinstance(body, dict):
            return _json_response({"error": "expected a JSON object of settings"}, status=400)
        try:
            config = self.configure(**body)
        except (TypeError, ValueError) as exc:
            return _json_response({"error": str(exc)}, status=400)
        return _json_response({"ok": True, "config": config.to_dict()})

    async def _ctl_fail(self, request: web.Request) -> web.StreamResponse:
        """Queue one fault (a JSON object of :class:`Fault` fields) or several (a list)."""
        body = _parse_body(await request.read())
        specs = body if isinstance(body, list) else [body]
        try:
            faults = [Fault(**spec) for spec in specs if isinstance(spec, dict)]
            if len(faults) != len(specs):
                raise ValueError("expected a JSON object or a list of objects")
        except (TypeError, ValueError) as exc:
            return _json_response({"error": str(exc)}, status=400)
        for fault in faults:
            self.add_fault(fault)
        return _json_response(
            {"ok": True, "pending_faults": [f.to_dict() for f in self.pending_faults()]}
        )


# ---- module-level pieces of the pipeline ------------------------------------------------------


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _INVALID_JSON


def _make_record(
    seq: int, endpoint: str, request: web.Request, body: Any, raw: bytes
) -> CallRecord:
    """Describe the call for the log before any validation, so bad calls are visible too."""
    model: str | None = None
    inputs: list[Any] = []
    stream = False
    if isinstance(body, dict):
        model = body.get("model") if isinstance(body.get("model"), str) else None
        stream = body.get("stream") is True
        if endpoint == "embeddings":
            inputs = _input_items(body.get("input")) or []
        elif endpoint == "completions":
            inputs = _input_items(body.get("prompt")) or []
        elif endpoint == "chat" and isinstance(body.get("messages"), list):
            inputs = [body["messages"]]
    elif endpoint == "models":
        model = request.match_info.get("model_id")
    recorded_body = raw.decode("utf-8", "replace") if body is _INVALID_JSON else body
    return CallRecord(
        seq=seq,
        endpoint=endpoint,
        method=request.method,
        path=request.path_qs,
        model=model,
        n_inputs=len(inputs),
        inputs=inputs,
        authorization=request.headers.get("Authorization"),
        raw_headers=request.raw_headers,
        body=recorded_body,
        stream=stream,
        at=time.time(),
    )


def _check_auth(request: web.BaseRequest, config: SimConfig) -> None:
    if not config.require_auth:
        return
    header = request.headers.get("Authorization", "")
    key = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not key:
        raise _ApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if config.api_keys and key not in config.api_keys:
        masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:]
        raise _ApiError(401, f"Incorrect API key provided: {masked}.", code="invalid_api_key")


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _ApiError(400, "The request body must be a JSON object.")
    return body


def _model_not_found(model: str) -> _ApiError:
    return _ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def _require_model(body: Mapping[str, Any], config: SimConfig) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _ApiError(400, "you must provide a model parameter")
    if config.strict_models and model not in config.models:
        raise _model_not_found(model)
    return model


def _check_token_limits(tokens: Sequence[int], config: SimConfig) -> None:
    longest = max(tokens)
    if longest > config.max_input_tokens:
        raise _ApiError(
            400,
            f"This model's maximum context length is {config.max_input_tokens} tokens, however you "
            f"requested {longest} tokens ({longest} in your prompt; 0 for the completion). "
            "Please reduce your prompt; or completion length.",
            code="context_length_exceeded",
        )
    total = sum(tokens)
    if total > config.max_request_tokens:
        raise _ApiError(
            400,
            f"Requested {total} tokens, max {config.max_request_tokens} tokens per request",
            code="max_tokens_per_request",
        )


def _variant(base: str, choice: int, randomise: bool) -> str:
    """Choice 0 is the plain answer; other choices and sampled answers get visible suffixes."""
    text = base if choice == 0 else f"{base} #{choice}"
    return f"{text} ~{random.getrandbits(32):08x}" if randomise else text


def _usage(prompt: int, completion: int, *, detailed: bool = False) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if detailed:  # chat completions carry the token details objects; legacy completions do not
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        usage["completion_tokens_details"] = {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return usage


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _MODEL_CREATED, "owned_by": "sluice-sim"}


def _compute(ctx: _Ctx, handler: _Handler, fault: Fault | None) -> _Reply:
    """Auth, injected status, body checks and the handler: everything but waiting and I/O."""
    _check_auth(ctx.request, ctx.config)
    if fault is not None and fault.mode == "status":
        raise _fault_error(fault)
    if ctx.body is _INVALID_JSON:
        raise _ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )
    return handler(ctx)


async def _stream(
    request: web.Request, events: list[bytes], request_id: str, delay: float, cut: int | None
) -> web.StreamResponse:
    """Write SSE ``events`` then ``[DONE]``, ``delay`` seconds apart; with ``cut``, stop after
    that many events and close the connection without ``[DONE]``."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "x-request-id": request_id,
        }
    )
    sent = events if cut is None else events[: max(0, cut)]
    tail = [] if cut is not None else [_SSE_DONE]
    try:
        await response.prepare(request)
        if delay <= 0:  # one write: cheapest for benches, same bytes on the wire
            await response.write(b"".join(sent + tail))
        else:
            for i, event in enumerate(sent + tail):
                if i:
                    await asyncio.sleep(delay)
                await response.write(event)
    except ConnectionError:  # the client went away mid-stream: nothing left to do
        return response
    if cut is not None:
        _drop_connection(request, rst=False)
    return response


async def _truncated(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Send the headers and half of ``response``'s body, then close: a truncated answer."""
    body = response.body if isinstance(response.body, bytes) else b""
    out = web.StreamResponse(status=response.status, headers=response.headers)
    out.content_length = len(body)  # promise the full length so the client notices the cut
    with contextlib.suppress(ConnectionError):  # the client may already be gone
        await out.prepare(request)
        await out.write(body[: len(body) // 2])
    _drop_connection(request, rst=False)
    return out


# --------------------------------------------------------------------------------------------
# Running in a background thread
# --------------------------------------------------------------------------------------------


class SimulatorThread:
    """Runs a :class:`Simulator` on its own event loop in a daemon thread.

    ``with SimulatorThread(latency_ms=5) as sim:`` yields the :class:`Simulator`, whose control
    methods are thread-safe; the server is stopped when the block ends.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **overrides: Any,
    ) -> None:
        self.sim = Simulator(config, **overrides)
        self._host = host
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.sim.url

    def start(self, timeout: float = 10.0) -> str:
        """Start serving; blocks until the port is bound and returns the base URL."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="sluice-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("simulator did not start in time")
        if self._error is not None:
            raise RuntimeError("simulator failed to start") from self._error
        return self.sim.url

    def stop(self, timeout: float = 10.0) -> None:
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is None or stopping is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.sim.start(self._host, self._port)
        except BaseException as exc:  # reported to start() in the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.sim.stop()

    def __enter__(self) -> Simulator:
        self.start()
        return self.sim

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __getattr__(self, name: str) -> Any:
        # Convenience: thread.fail_next(...), thread.stats, ... reach the simulator. Only called
        # for missing attributes; the guard avoids recursion if __init__ failed before self.sim.
        if name == "sim":
            raise AttributeError(name)
        return getattr(self.sim, name)


# --------------------------------------------------------------------------------------------
# pytest plugin (enable with pytest_plugins = ["tests.support.simulator"])
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def simulator_thread() -> Iterator[SimulatorThread]:
    """One simulator for the whole session, on a stable URL (for session-scoped proxies)."""
    runner = SimulatorThread()
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


@pytest.fixture
def simulator(simulator_thread: SimulatorThread) -> Iterator[Simulator]:
    """The session's simulator with fresh state: default config, no calls, no faults."""
    simulator_thread.sim.reset()
    yield simulator_thread.sim
    simulator_thread.sim.reset()  # do not leak faults a test queued but never triggered


# --------------------------------------------------------------------------------------------
# Standalone (benches)
# --------------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.simulator",
        description="OpenAI-compatible upstream simulator (control API under /_sim).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--per-input-latency-ms", type=float, default=0.0)
    parser.add_argument("--stream-chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--dimensions", type=int, default=16, help="default embedding size")
    parser.add_argument("--shuffle", action="store_true", help="shuffle embeddings and completions")
    parser.add_argument("--require-auth", action="store_true")
    parser.add_argument("--api-key", action="append", default=[], help="accepted key (repeatable)")
    parser.add_argument("--call-log-limit", type=int, default=10_000)
    return parser.parse_args(argv)


async def _serve_forever(args: argparse.Namespace) -> None:
    sim = Simulator(
        latency_ms=args.latency_ms,
        per_input_latency_ms=args.per_input_latency_ms,
        stream_chunk_delay_ms=args.stream_chunk_delay_ms,
        default_dimensions=args.dimensions,
        shuffle_embeddings=args.shuffle,
        shuffle_completions=args.shuffle,
        require_auth=args.require_auth,
        api_keys=tuple(args.api_key),
        call_log_limit=args.call_log_limit,
    )
    url = await sim.start(args.host, args.port)
    print(url, flush=True)  # benches read this line to learn the port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        import uvloop  # a project dependency; keeps the simulator cheaper than the proxy
    except ImportError:
        asyncio.run(_serve_forever(args))
    else:
        uvloop.run(_serve_forever(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
