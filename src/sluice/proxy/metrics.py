"""Every Prometheus metric the proxy exports, with its help text (DESIGN.md §5).

Names use base units and `_total` for counters; label values come from small fixed sets (route
names, endpoint kinds, status codes, configured upstream hosts), never from callers' input.

The metrics every request touches (`http_requests`, `http_duration`, `cache_requests`, and on a
cache hit `upstream_calls_saved`, `llm_tokens_saved`) are `LoopCounter`/`LoopHistogram` below
rather than prometheus_client's classes: the same exposition at a fraction of the cost, see
their docstring. `http_in_flight` is read from the app at scrape
time (`ProxyApp.startup`) rather than counted up and down.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

# `_created` series double the exposition for no use on a dashboard. (prometheus_client 0.26
# ships this function without annotations.)
disable_created_metrics()  # type: ignore[no-untyped-call]

# OpenTelemetry's GenAI duration buckets run from 10 ms to 82 s; HTTP adds the sub-10 ms range
# that cache hits live in.
LLM_BUCKETS = tuple(0.01 * 2**i for i in range(14))
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, *LLM_BUCKETS)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


# --- Counters of the event loop's thread --------------------------------------------------------
# prometheus_client's `inc()` takes a lock and runs two checks (~450 ns), `observe()` also walks
# the buckets (~870 ns); with the in-flight gauge's inc and dec that was ~2.6 µs of every cache hit
# (six updates). These children are a plain attribute update (~60-130 ns). They are safe because
# every update and every scrape (`/metrics` is served by the same loop) runs on one thread.


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bound >= amount: Prometheus buckets are `le` (less than or equal).
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class LoopCounter:
    """A labelled counter, updated from the event loop only; exported as a `Counter` would be."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], CounterChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> CounterChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = CounterChild()
        return child

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, child.value)
        return [family]


class LoopHistogram:
    """A labelled histogram, updated from the event loop only; exported as `Histogram` would be."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = (*sorted(buckets), math.inf)
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = HistogramChild(self.bounds)
        return child

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        # `le` spelt as prometheus_client spells it (the function ships without annotations).
        names = [floatToGoString(bound) for bound in self.bounds]  # type: ignore[no-untyped-call]
        for values, child in self._children.items():
            cumulative, buckets = 0, []
            for name, count in zip(names, child.counts, strict=True):
                cumulative += count
                buckets.append((name, float(cumulative)))
            family.add_metric(values, buckets, child.sum)
        return [family]


# --- HTTP surface -------------------------------------------------------------------------------
http_requests = LoopCounter(
    "sluice_http_requests_total",
    "HTTP requests answered, by route, method and status code.",
    ["route", "method", "status"],
)
http_duration = LoopHistogram(
    "sluice_http_request_duration_seconds",
    "Time from request to the end of the response.",
    ["route"],
    buckets=HTTP_BUCKETS,
)
http_in_flight = Gauge("sluice_http_requests_in_flight", "HTTP requests being answered now.")

# --- LLM upstream -------------------------------------------------------------------------------
llm_requests = Counter(
    "sluice_llm_requests_total",
    "Calls made to the LLM upstream (each attempt counts), by endpoint kind and status code "
    "(`error` for transport failures, `timeout` for silence).",
    ["endpoint", "status"],
)
llm_duration = Histogram(
    "sluice_llm_request_duration_seconds",
    "Time from sending an upstream call to the end of its response.",
    ["endpoint"],
    buckets=LLM_BUCKETS,
)
llm_tokens = Counter(
    "sluice_llm_tokens_total",
    "Tokens the upstream reported in `usage`, by endpoint kind and type.",
    ["endpoint", "type"],
)
llm_tokens_saved = LoopCounter(
    "sluice_llm_tokens_saved_total",
    "Tokens of answers served without an upstream call (from the cache, or shared with an "
    "identical call in flight), as their `usage` reported them, by endpoint kind and type.",
    ["endpoint", "type"],
)
llm_retries = Counter(
    "sluice_llm_retries_total",
    "Upstream calls retried, by endpoint kind and reason.",
    ["endpoint", "reason"],
)
upstream_up = Gauge(
    "sluice_upstream_endpoint_up",
    "1 while an upstream endpoint takes traffic, 0 while it rests.",
    ["upstream"],
)

# --- Batching -----------------------------------------------------------------------------------
batch_size = Histogram(
    "sluice_batch_size",
    "Items (requests or embedding inputs) per upstream call of a batch.",
    ["endpoint"],
    buckets=BATCH_BUCKETS,
)
batch_wait = Histogram(
    "sluice_batch_wait_seconds",
    "Time an item waited in the queue before its batch was sent.",
    ["endpoint"],
    buckets=WAIT_BUCKETS,
)
batch_flushes = Counter(
    "sluice_batch_flushes_total",
    "Batches sent, by endpoint kind and reason (size, timeout, shutdown).",
    ["endpoint", "reason"],
)
batch_queue_depth = Gauge(
    "sluice_batch_queue_depth",
    "Items waiting for a batch, or calls that go alone waiting for a turn, by endpoint kind.",
    ["endpoint"],
)
batches_in_flight = Gauge(
    "sluice_batches_in_flight",
    "Batches being processed now (a call that goes alone counts as one), by endpoint kind.",
    ["endpoint"],
)
upstream_calls_saved = LoopCounter(
    "sluice_upstream_calls_saved_total",
    "Upstream calls avoided, by endpoint kind and reason: batched (coalesced into another "
    "caller's call), cached (answered from the cache), shared (an identical call in flight "
    "answered it).",
    ["endpoint", "reason"],
)
batch_rejected = Counter(
    "sluice_batch_rejected_total",
    "Requests refused with 429 because the queue was full.",
    ["endpoint"],
)

# --- Cache --------------------------------------------------------------------------------------
cache_requests = LoopCounter(
    "sluice_cache_requests_total",
    "Cache look-ups, by kind of data (embeddings count one per input) and result: hit, miss, "
    "stale (served past its TTL), bypass (not read: not cacheable, no-cache, backend down).",
    ["cache", "result"],
)
cache_entries = Gauge("sluice_cache_entries", "Entries held in the in-memory cache.", ["backend"])
cache_bytes = Gauge("sluice_cache_bytes", "Bytes held in the in-memory cache.", ["backend"])
cache_evictions = Counter(
    "sluice_cache_evictions_total",
    "Entries evicted from the in-memory cache, by reason.",
    ["backend", "reason"],
)
cache_backend_errors = Counter(
    "sluice_cache_backend_errors_total",
    "Cache backend operations that failed or timed out.",
    ["backend", "operation"],
)
redis_duration = Histogram(
    "sluice_redis_operation_duration_seconds",
    "Time of one Redis round trip.",
    ["operation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)

# --- Runtime ------------------------------------------------------------------------------------
asyncio_tasks = Gauge("sluice_asyncio_tasks", "asyncio tasks alive on the proxy's event loop.")
event_loop_lag = Gauge(
    "sluice_event_loop_lag_seconds",
    "How late the last periodic wake-up of the event loop ran.",
)
pool_connections = Gauge(
    "sluice_pool_connections",
    "Upstream connections, by pool client and state (in_use, idle).",
    ["pool", "client", "state"],
)
pool_limit = Gauge(
    "sluice_pool_connection_limit",
    "Most upstream connections a pool client may open (its `maxConnections`).",
    ["pool", "client"],
)
pool_waiting = Gauge(
    "sluice_pool_waiting_requests",
    "Requests waiting for a free upstream connection.",
    ["pool", "client"],
)

# --- MCP gateway --------------------------------------------------------------------------------
tool_calls = Counter(
    "sluice_tool_calls_total",
    "tools/call requests through the gateway, by server, tool (beyond a per-server cap of "
    "distinct names: `other`) and outcome: ok, error (the tool said isError), failed (the "
    "server could not be reached or answered a JSON-RPC error), cached (answered from the cache).",
    ["server", "tool", "outcome"],
)
tool_call_duration = Histogram(
    "sluice_tool_call_duration_seconds",
    "Time from a tools/call reaching the gateway to its answer, by server.",
    ["server"],
    buckets=HTTP_BUCKETS,
)
mcp_list_fetch_duration = Histogram(
    "sluice_mcp_list_fetch_duration_seconds",
    "Time to fetch one server's whole list (every page), by server and list "
    "(tools, prompts, resources).",
    ["server", "list"],
    buckets=HTTP_BUCKETS,
)
mcp_upstream_up = Gauge(
    "sluice_mcp_upstream_up",
    "1 while an upstream MCP server answers, 0 after it failed (its last good lists are served).",
    ["server"],
)
mcp_tools = Gauge(
    "sluice_mcp_tools",
    "Tools in an upstream server's last good tools/list.",
    ["server"],
)
mcp_sessions = Gauge(
    "sluice_mcp_sessions",
    "MCP sessions open: `client` for callers connected to /mcp (session-based revisions), "
    "`upstream` for the gateway's own sessions with the servers.",
    ["side"],
)
mcp_notifications = Counter(
    "sluice_mcp_notifications_total",
    "Notifications received from upstream servers, by server and method.",
    ["server", "method"],
)

# --- Deferred mode (Batch API jobs) -------------------------------------------------------------
deferred_items = Counter(
    "sluice_deferred_items_total",
    "Requests deferred (kept for a Batch API job), by endpoint kind.",
    ["endpoint"],
)
deferred_answers = Counter(
    "sluice_deferred_answers_total",
    "Deferred requests answered, by endpoint kind and path: batch (a Batch API job's result), "
    "sync (sent synchronously at full price by the deadline fallback), error (given up).",
    ["endpoint", "path"],
)
deferred_fallbacks = Counter(
    "sluice_deferred_fallbacks_total",
    "Deferred requests sent synchronously, by reason: admission (the deadline was nearer than "
    "a batch takes), deadline (it neared while the item waited).",
    ["reason"],
)
deferred_batches = Counter(
    "sluice_deferred_batches_total",
    "Batch API jobs by the state they reached: submitted, completed, expired, cancelled, "
    "failed, abandoned (every item answered otherwise, so the proxy cancelled it).",
    ["state"],
)
deferred_batch_duration = Histogram(
    "sluice_deferred_batch_duration_seconds",
    "Time from submitting a Batch API job to its end.",
    buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 57600, 86400),
)
deferred_tokens = Counter(
    "sluice_deferred_tokens_total",
    "Tokens answered at the batch price, by type (prompt, completion).",
    ["type"],
)
deferred_saved = Counter(
    "sluice_deferred_cost_saved_dollars_total",
    "Estimated dollars saved by batch answers against the synchronous price "
    "(`llm.deferred.prices` times `savingsRatio`; models without a price count nothing).",
)
