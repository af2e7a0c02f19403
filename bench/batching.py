"""Embeddings coalescing: direct to the simulator vs through Sluice, single-input callers.

    python -m bench.batching [--clients 64] [--requests 6400] [--latency-ms 20]
                             [--per-input-latency-ms 0.05] [--max-batch-size 32] [--max-wait-ms 10]

The simulator charges a fixed latency per call plus a little per input, like a real embeddings
API. Targets (DESIGN.md §6): at full load, upstream calls cut by ≥ 0.9 x maxBatchSize; p50
latency added ≤ maxWaitMilliseconds + 2 ms. Every row is measured in the same run on the same
machine, so the ratios hold even when the machine is busy.
"""

from __future__ import annotations

import argparse
import asyncio
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench import common

MODEL = "text-embedding-3-small"


def bodies(count: int = 512) -> list[bytes]:
    """Single-input requests with distinct texts, base64-encoded as the openai client asks."""
    return [
        orjson.dumps({"model": MODEL, "input": f"bench text {n}", "encoding_format": "base64"})
        for n in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[64])
    parser.add_argument("--requests", type=int, default=6400)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--per-input-latency-ms", type=float, default=0.05)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=int, default=10)
    args = parser.parse_args()
    batching = {"maxBatchSize": args.max_batch_size, "maxWaitMilliseconds": args.max_wait_ms}
    sim_args = ["--latency-ms", str(args.latency_ms), "--call-log-limit", "0"]
    sim_args += ["--per-input-latency-ms", str(args.per_input_latency_ms)]
    header = ["clients", "path", "upstream calls", "calls cut", "req/s", "p50 ms", "p99 ms"]
    rows = [[*header, "added p50 ms", "proxy CPU/req ms", "flushes size/timeout"]]
    with common.simulator(*sim_args) as sim:
        config = {"llm": {"upstream": {"url": sim}, "batching": batching, "cache": {"mode": "off"}}}
        with common.sluice(config) as proxy:
            for clients in args.clients:
                rows += measure(sim, proxy, clients, args.requests)
    print(common.table(rows))
    target_cut = 0.9 * args.max_batch_size
    print(
        f"\ntargets: calls cut >= {target_cut:.1f}x; added p50 <= {args.max_wait_ms + 2} ms"
        f" (maxBatchSize {args.max_batch_size}, maxWaitMilliseconds {args.max_wait_ms})"
    )


def measure(sim: str, proxy: common.Proxy, clients: int, count: int) -> list[list[str]]:
    """A direct row and a Sluice row at one load, with their upstream calls."""
    payloads = bodies()
    asyncio.run(common.load(sim + "/embeddings", payloads, clients, clients * 4))  # warm up
    common.configure_simulator(sim)
    direct = asyncio.run(common.load(sim + "/embeddings", payloads, clients, count))
    direct_calls = common.simulator_calls(sim, "embeddings")

    url = proxy.url + "/embeddings"
    asyncio.run(common.load(url, payloads, clients, clients * 4))
    common.configure_simulator(sim)
    flushed_before = flushes(proxy)
    cpu_before = common.cpu_seconds(proxy.pid)
    through = asyncio.run(common.load(url, payloads, clients, count))
    cpu_ms = (common.cpu_seconds(proxy.pid) - cpu_before) / through.requests * 1000
    calls = common.simulator_calls(sim, "embeddings")
    flushed = {k: v - flushed_before.get(k, 0) for k, v in flushes(proxy).items()}
    added = (through.p50 - direct.p50) * 1000
    return [
        row(clients, "direct", direct, direct_calls, direct_calls, ["", "", ""]),
        row(
            clients,
            "sluice",
            through,
            calls,
            direct_calls,
            [
                f"{added:+.2f}",
                f"{cpu_ms:.3f}",
                f"{flushed.get('size', 0):.0f}/{flushed.get('timeout', 0):.0f}",
            ],
        ),
    ]


def row(
    clients: int, path: str, result: common.Result, calls: int, direct_calls: int, rest: list[str]
) -> list[str]:
    errors = f" ({result.errors} errors)" if result.errors else ""
    return [
        str(clients),
        path + errors,
        str(calls),
        f"{direct_calls / max(calls, 1):.1f}x",
        f"{result.rate:.0f}",
        f"{result.p50 * 1000:.2f}",
        f"{result.p99 * 1000:.2f}",
        *rest,
    ]


def flushes(proxy: common.Proxy) -> dict[str, float]:
    """`sluice_batch_flushes_total` of embeddings, by reason."""
    root = proxy.url.removesuffix("/v1")
    with urllib.request.urlopen(root + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "sluice_batch_flushes_total"
        and sample.labels.get("endpoint") == "embeddings"
    }


if __name__ == "__main__":
    main()
