"""The scenarios of the side-by-side run, each measured against every system in turn.

Each function takes systems that are already running (a `common.Proxy`: base URL and pid) and
fills a `report.Scenario`. The proxy under test is pinned to core 0 and the load generator
(`bench.loadgen`, or wrk for the cache rows) to core 1, so the proxy's figures are one core's;
the simulator is not pinned. CPU is the proxy's whole process tree, from /proc.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench import cache_hits, common, loadgen
from bench.report import Metric, Scenario

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello from the bench"}]}
# Forty words of prompt, so the simulator's echo streams about fifty events.
LONG = " ".join(f"word{i}" for i in range(40))
STREAMED = {**CHAT, "messages": [{"role": "user", "content": LONG}], "stream": True}
EMBEDDING_MODEL = "text-embedding-3-small"


@dataclasses.dataclass
class Plan:
    """How much of each scenario to run: `quick` fits in under 3 minutes."""

    requests: int
    wrk_seconds: int
    overload_seconds: float
    soak_seconds: float
    litellm_requests: int
    """LiteLLM spends ~10 ms of CPU per request: fewer requests keep its rows bounded in time."""
    gc_requests: int
    """Requests per variant of `bench.gcpressure` (the issue asks per 10,000: the full run)."""


QUICK = Plan(600, 3, 3, soak_seconds=0, litellm_requests=150, gc_requests=1600)
FULL = Plan(3000, 6, 8, soak_seconds=600, litellm_requests=500, gc_requests=10_000)


def chat_body(n: int = 0) -> str:
    return orjson.dumps({**CHAT, "messages": [{"role": "user", "content": f"hello {n}"}]}).decode()


def measured(
    proxy: common.Proxy | None, spec: dict[str, Any], warm: int = 0
) -> tuple[dict[str, Any], float | None]:
    """One load through `proxy` (or direct when None): the generator's result and the proxy
    tree's CPU milliseconds per answered request."""
    if warm:
        loadgen.run({**spec, "requests": warm, "seconds": 30})
    before = common.tree_cpu_seconds(proxy.pid) if proxy else 0.0
    result = loadgen.run(spec)
    if proxy is None or not result["requests"]:
        return result, None
    return result, (common.tree_cpu_seconds(proxy.pid) - before) / result["requests"] * 1000


# --- chat pass-through ------------------------------------------------------------------------

PASSTHROUGH_METRICS = [
    Metric("req/s", ""),
    Metric("p50", "ms", "lower"),
    Metric("p90", "ms", "lower"),
    Metric("p99", "ms", "lower"),
    Metric("added p50", "ms", "lower"),
    Metric("proxy CPU/req", "ms", "lower", 3),
    Metric("errors", "", "lower", 0),
]


def passthrough(
    clients: int, systems: dict[str, common.Proxy | None], plan: Plan, direct: str
) -> Scenario:
    """Uncached chat at `clients` closed-loop callers; `direct` is the simulator's /v1 URL."""
    chart = "added p50" if clients == 1 else "proxy CPU/req"
    scenario = Scenario(
        f"Chat pass-through, {clients} client{'s' if clients > 1 else ''}",
        f"Uncached `POST /v1/chat/completions`, simulator at 20 ms, {clients} closed-loop "
        "callers. Sluice with batching and caching off; LiteLLM without its cache. "
        "`added p50` is over the direct row of this table.",
        PASSTHROUGH_METRICS,
        chart=chart,
        peer="litellm",
    )
    base = None
    for name, proxy in systems.items():
        url = (proxy.url if proxy else direct) + "/chat/completions"
        count = plan.litellm_requests if name == "litellm" else plan.requests
        count = count // 4 if clients == 1 else count
        spec = {"mode": "closed", "url": url, "bodies": [chat_body()], "concurrency": clients}
        result, cpu = measured(proxy, {**spec, "requests": count, "seconds": 60}, warm=clients * 4)
        if base is None:
            base = result["p50"]
        added = result["p50"] - base if proxy else None
        scenario.add(
            name,
            **{"req/s": result["rate"], "p50": result["p50"], "p90": result["p90"]},
            **{"p99": result["p99"], "added p50": added, "proxy CPU/req": cpu},
            errors=result["errors"],
        )
    return scenario


# --- streamed chat ----------------------------------------------------------------------------


def streaming(systems: dict[str, common.Proxy | None], plan: Plan, direct: str) -> Scenario:
    scenario = Scenario(
        "Streamed chat, 32 clients",
        "Uncached streamed chats, 32 closed-loop callers; the simulator answers after 20 ms and "
        "then sends an event every 2 ms. Time to the first event and the mean spacing of the "
        "rest, at p50; `added` is over direct.",
        [
            Metric("streams/s", ""),
            Metric("events/stream", "", digits=0),
            Metric("TTFT p50", "ms", "lower"),
            Metric("added TTFT", "ms", "lower"),
            Metric("spacing p50", "ms", "lower", 3),
            Metric("added spacing", "ms", "lower", 3),
            Metric("proxy CPU/stream", "ms", "lower", 3),
            Metric("errors", "", "lower", 0),
        ],
        chart="added TTFT",
        peer="litellm",
    )
    body = orjson.dumps(STREAMED).decode()
    base: dict[str, Any] = {}
    for name, proxy in systems.items():
        url = (proxy.url if proxy else direct) + "/chat/completions"
        count = plan.litellm_requests if name == "litellm" else plan.requests // 2
        spec = {"mode": "stream", "url": url, "bodies": [body], "concurrency": 32, "seconds": 60}
        result, cpu = measured(proxy, {**spec, "requests": count}, warm=64)
        base = base or result
        scenario.add(
            name,
            **{"streams/s": result["rate"], "events/stream": result["chunks"]},
            **{"TTFT p50": result["ttft_p50"], "spacing p50": result["gap_p50"]},
            **{"added TTFT": result["ttft_p50"] - base["ttft_p50"] if proxy else None},
            **{"added spacing": result["gap_p50"] - base["gap_p50"] if proxy else None},
            **{"proxy CPU/stream": cpu, "errors": result["errors"]},
        )
    return scenario


# --- embeddings -------------------------------------------------------------------------------


def embeddings(
    systems: dict[str, common.Proxy | None], plan: Plan, direct: str, sim: str
) -> Scenario:
    scenario = Scenario(
        "Embeddings, 64 single-input callers",
        "64 closed-loop callers, each sending one distinct input per request (base64, as the "
        "openai client asks). Sluice coalesces them (maxBatchSize 32, maxWaitMilliseconds 10); "
        "the simulator takes 20 ms per call plus 0.05 ms per input. Upstream calls counted by "
        "the simulator.",
        [
            Metric("req/s", ""),
            Metric("p50", "ms", "lower"),
            Metric("p99", "ms", "lower"),
            Metric("upstream calls", "", "lower", 0),
            Metric("calls per 100 req", "", "lower"),
            Metric("proxy CPU/req", "ms", "lower", 3),
            Metric("errors", "", "lower", 0),
        ],
        chart="calls per 100 req",
        peer="litellm",
    )
    bodies = [
        orjson.dumps(
            {"model": EMBEDDING_MODEL, "input": f"bench text {n}", "encoding_format": "base64"}
        ).decode()
        for n in range(512)
    ]
    for name, proxy in systems.items():
        url = (proxy.url if proxy else direct) + "/embeddings"
        count = plan.litellm_requests if name == "litellm" else plan.requests * 2
        spec = {"mode": "closed", "url": url, "bodies": bodies, "concurrency": 64, "seconds": 60}
        loadgen.run({**spec, "requests": 128})
        common.configure_simulator(sim)  # counts from zero
        result, cpu = measured(proxy, {**spec, "requests": count})
        calls = common.simulator_calls(sim, "embeddings")
        scenario.add(
            name,
            **{"req/s": result["rate"], "p50": result["p50"], "p99": result["p99"]},
            **{"upstream calls": calls, "calls per 100 req": 100 * calls / max(1, result["ok"])},
            **{"proxy CPU/req": cpu, "errors": result["errors"]},
        )
    return scenario


# --- open-loop overload -----------------------------------------------------------------------

OVERLOAD_IN_FLIGHT = 8
"""What the upstream takes at once in this scenario, and what Sluice's policy is told
(maxConcurrentBatches 1 x maxBatchSize 8): at 20 ms, 400 calls/s."""
CAPACITY = OVERLOAD_IN_FLIGHT / 0.020


def overload(systems: dict[str, common.Proxy], plan: Plan) -> Scenario:
    scenario = Scenario(
        "Open-loop overload, then recovery",
        f"An upstream that takes {OVERLOAD_IN_FLIGHT} calls at once (20 ms each: "
        f"{CAPACITY:,.0f}/s). Requests arrive on a fixed schedule at 2x that "
        f"({2 * CAPACITY:,.0f}/s) for {plan.overload_seconds:g} s, then at half of it for as "
        "long (recovery). Latency is from each request's scheduled start; at most 2,000 are "
        "outstanding (more are `dropped` by the generator); 10 s timeout. Sluice's chat limiter "
        "holds 8 in flight and queues 32, beyond that a 429 with Retry-After. LiteLLM has no "
        "such bound: it takes everything.",
        [
            Metric("served/s", ""),
            Metric("429s", "", "lower", 0),
            Metric("other errors", "", "lower", 0),
            Metric("p99 served", "ms", "lower"),
            Metric("recovery served/s", ""),
            Metric("recovery errors", "", "lower", 0),
            Metric("recovery p99", "ms", "lower"),
        ],
        chart="recovery p99",
    )
    for name, proxy in systems.items():
        url = proxy.url + "/chat/completions"
        spec = {"mode": "open", "url": url, "bodies": [chat_body()], "timeout": 10}
        spec |= {"max_outstanding": 2000, "seconds": plan.overload_seconds}
        hot = loadgen.run({**spec, "rate": 2 * CAPACITY})
        cool = loadgen.run({**spec, "rate": CAPACITY / 2})
        statuses = hot["statuses"]
        other = hot["errors"] - statuses.get("429", 0)
        note = f"{statuses.get('dropped', 0)} dropped by the generator"
        scenario.add(
            name,
            note,
            **{"served/s": hot["ok"] / hot["seconds"], "429s": statuses.get("429", 0)},
            **{"other errors": other, "p99 served": hot["p99"]},
            **{"recovery served/s": cool["ok"] / cool["seconds"]},
            **{"recovery errors": cool["errors"], "recovery p99": cool["p99"]},
        )
    return scenario


# --- memory -----------------------------------------------------------------------------------

IN_FLIGHT = 1000


def memory(systems: dict[str, common.Proxy]) -> Scenario:
    """RSS idle, and while 1,000 requests are held in flight (the simulator answers after 4 s)."""
    scenario = Scenario(
        "Memory",
        f"Resident memory of the proxy's process tree: idle after a warm-up, and at its peak "
        f"while {IN_FLIGHT:,} chat requests are in flight (the simulator holds each for 4 s).",
        [
            Metric("RSS idle", "MB", "lower", 1),
            Metric(f"RSS, {IN_FLIGHT:,} in flight", "MB", "lower", 1),
            Metric("MB per 1,000 in flight", "MB", "lower", 1),
            Metric("errors", "", "lower", 0),
        ],
        chart=f"RSS, {IN_FLIGHT:,} in flight",
        peer="litellm",
    )
    for name, proxy in systems.items():
        idle = common.tree_rss_bytes(proxy.pid) / 1e6
        spec = {"mode": "closed", "url": proxy.url + "/chat/completions", "timeout": 30}
        spec |= {"bodies": [chat_body(n) for n in range(IN_FLIGHT)], "seconds": 30}
        peak, result = held(proxy.pid, {**spec, "concurrency": IN_FLIGHT, "requests": IN_FLIGHT})
        scenario.add(
            name,
            **{"RSS idle": idle, f"RSS, {IN_FLIGHT:,} in flight": peak},
            **{"MB per 1,000 in flight": (peak - idle) * 1000 / IN_FLIGHT},
            errors=result["errors"],
        )
    return scenario


def held(pid: int, spec: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """The peak RSS (MB) of `pid`'s tree while a load runs, and the load's result."""
    results: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: results.append(loadgen.run(spec)))
    worker.start()
    peak = 0.0
    while worker.is_alive():
        peak = max(peak, common.tree_rss_bytes(pid) / 1e6)
        time.sleep(0.1)
    worker.join()
    return peak, results[0]


# --- cache hits (wrk) -------------------------------------------------------------------------


def hits_metrics() -> list[Metric]:
    return [
        Metric("hits/s", ""),
        Metric("CPU/hit", "µs", "lower", 1),
        Metric("hit ratio", "%", digits=0),
        Metric("non-2xx", "", "lower", 0),
    ]


def wrk_row(
    proxy: common.Proxy, path: str, body: bytes, seconds: int, calls: Callable[[], int]
) -> dict[str, float]:
    """wrk (32 connections, core 1) against a warmed entry; `calls()` counts the upstream's
    calls, so every request that reached it is a miss, whoever's cache it went through."""
    url = proxy.url + path
    cache_hits.warm(url, body)
    cache_hits.wrk(url, body, 1, 32)
    calls_before, cpu_before = calls(), common.tree_cpu_seconds(proxy.pid)
    rate, total, errors = cache_hits.wrk(url, body, seconds, 32)
    cpu = common.tree_cpu_seconds(proxy.pid) - cpu_before
    ratio = (1 - (calls() - calls_before) / total) * 100 if total else 0.0
    cells = {"hits/s": rate, "CPU/hit": cpu / max(total, 1) * 1e6, "hit ratio": ratio}
    return {**cells, "non-2xx": errors}


def soak(proxy: common.Proxy, seconds: float, rate: float = 200) -> Scenario:
    """Moderate open-loop load for `seconds`: half cache hits, half distinct misses."""
    scenario = Scenario(
        "Soak",
        f"{seconds / 60:g} minutes open-loop at {rate:g} requests/s (half repeats that hit the "
        "memory cache, half distinct requests that miss), RSS sampled every 5 s. Drift is the "
        "last minute's mean RSS over the first minute's, after a warm-up minute.",
        [
            Metric("requests", "", digits=0),
            Metric("errors", "", "lower", 0),
            Metric("RSS first minute", "MB", "lower", 1),
            Metric("RSS last minute", "MB", "lower", 1),
            Metric("RSS drift", "%", "lower"),
        ],
        chart="RSS drift",
    )
    bodies = [chat_body(0) if n % 2 else chat_body(n) for n in range(20000)]
    spec = {"mode": "open", "url": proxy.url + "/chat/completions", "bodies": bodies}
    spec |= {"rate": rate, "seconds": seconds, "max_outstanding": 2000, "timeout": 10}
    samples: list[tuple[float, float]] = []
    results: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: results.append(loadgen.run(spec)))
    started = time.monotonic()
    worker.start()
    while worker.is_alive():
        samples.append((time.monotonic() - started, common.tree_rss_bytes(proxy.pid) / 1e6))
        worker.join(5)
    result = results[0]
    first = [rss for t, rss in samples if 60 <= t < 120] or [samples[0][1]]
    last = [rss for t, rss in samples if t >= seconds - 60] or [samples[-1][1]]
    head, tail = sum(first) / len(first), sum(last) / len(last)
    scenario.add(
        "sluice memory",
        **{"requests": result["requests"], "errors": result["errors"]},
        **{"RSS first minute": head, "RSS last minute": tail},
        **{"RSS drift": (tail - head) / head * 100},
    )
    return scenario
