"""The simulator's settings, queued faults and call log, and the lock that guards them.

:class:`SimConfig`, :class:`Fault`, :class:`CallRecord` and :class:`SimStats` are the values
tests pass in and read back (the package re-exports them); :class:`State` holds the live ones.
The request pipeline (:mod:`.pipeline`) records calls and takes faults on the simulator's loop
while tests configure and read from their own threads through :class:`.server.Simulator`.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

FaultMode: TypeAlias = Literal["status", "hang", "close", "reset", "cut"]

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
)
_FAULT_MODES: frozenset[str] = frozenset({"status", "hang", "close", "reset", "cut"})
# Endpoint names used in counters, call records and fault targets; aliases accepted on input.
_ENDPOINTS = ("embeddings", "chat", "completions", "models", "files", "batches", "other")
_ENDPOINT_ALIASES: dict[str, str] = {
    **{name: name for name in _ENDPOINTS},
    "any": "any",
    "*": "any",
    "chat.completions": "chat",
    "chat/completions": "chat",
    "passthrough": "other",
}


def canonical_endpoint(name: str) -> str:
    """Map ``"/v1/chat/completions"``, ``"chat.completions"``, ``"*"``... to a canonical name."""
    key = name.strip().lower().removeprefix("/").removeprefix("v1/").strip("/")
    try:
        return _ENDPOINT_ALIASES[key]
    except KeyError:
        raise ValueError(
            f"unknown endpoint {name!r}; use one of {sorted(_ENDPOINT_ALIASES)}"
        ) from None


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
    batch_delay_ms: float = 0.0
    """Time a Batch API job takes from creation to ``completed``; its items finish evenly over
    it, so a job cancelled or expired half-way has answered the first half of its items."""
    batch_expire_ms: float | None = None
    """Time after which an unfinished job ``expired`` (the real API's window is 24 hours);
    None: jobs never expire. :meth:`.server.Simulator.expire_next_batch` targets one job."""

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
    hung_up_at: float | None = None
    """When the client (the proxy) closed the connection before the answer was complete."""
    usage: dict[str, Any] | None = None
    """The ``usage`` the answer reported (chat, completions, embeddings), for billing."""
    batch_id: str | None = None
    """For an item run inside a Batch API job: the job's id (such items are billed at the
    batch price and are not in :attr:`SimStats.calls`)."""

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
    batch_calls: list[CallRecord] = field(default_factory=list)
    """Items run inside Batch API jobs (their ``batch_id`` says which)."""

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
            out["batch_calls"] = [c.to_dict() for c in self.batch_calls]
        return out


class State:
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
        # Call numbers (request ids) are never reset, so ids stay unique for the server's life.
        # Only the simulator loop draws from it, so it needs no lock.
        self.seq = itertools.count(1)
        self.batch_calls: deque[CallRecord] = deque(maxlen=config.call_log_limit)
        # Files and Batch API jobs (:mod:`.batches`).
        self.files: dict[str, Any] = {}
        self.batches: dict[str, Any] = {}
        self.batch_faults: deque[Any] = deque()

    def reset(self, keep_config: bool) -> None:
        with self.lock:
            if not keep_config:
                self.config = self.initial
            self.faults.clear()
            self.batch_faults.clear()
            self.files.clear()
            self.batches.clear()
            self.calls = deque(maxlen=self.config.call_log_limit)
            self.batch_calls = deque(maxlen=self.config.call_log_limit)
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

    def record_batch_call(self, call: CallRecord) -> None:
        with self.lock:
            self.batch_calls.append(call)

    def snapshot(self) -> SimStats:
        with self.lock:
            return SimStats(
                calls_by_endpoint=dict(self.calls_by_endpoint),
                inputs_by_endpoint=dict(self.inputs_by_endpoint),
                total_calls=sum(self.calls_by_endpoint.values()),
                calls=list(self.calls),
                batch_calls=list(self.batch_calls),
            )

    def pending_faults(self) -> list[Fault]:
        with self.lock:
            return [dataclasses.replace(f) for f in self.faults]
