"""Pass-through overhead: direct to the simulator vs through Sluice, at 1 and 32 clients.

    python -m bench.passthrough [--requests 2000] [--latency-ms 20]

Targets (DESIGN.md §6): ≤ 1 ms added at p50 with one client; ≤ 0.5 ms proxy CPU per request.
Batching and caching are off: this measures the proxy's own cost on the plain path.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson

from bench import common

BODY = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello from the bench"}]}
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=20)
    args = parser.parse_args()
    config = {"llm": {"batching": {"enabled": False}, "cache": {"mode": "off"}}}
    rows = [["clients", "path", "req/s", "p50 ms", "p99 ms", "added p50 ms", "proxy CPU/req ms"]]
    with common.simulator("--latency-ms", str(args.latency_ms), "--call-log-limit", "0") as sim:
        config["llm"]["upstream"] = {"url": sim}
        with common.sluice(config) as proxy:
            for clients in (1, 32):
                count = args.requests if clients > 1 else args.requests // 4
                rows += measure(sim, proxy, clients, count)
    print(common.table(rows))


def measure(sim: str, proxy: common.Proxy, clients: int, count: int) -> list[list[str]]:
    # Warm both paths (connections, caches of the interpreter) before measuring.
    asyncio.run(common.load(proxy.url + "/chat/completions", [BODY], clients, clients * 4))
    direct = asyncio.run(common.load(sim + "/chat/completions", [BODY], clients, count))
    before = common.cpu_seconds(proxy.pid)
    through = asyncio.run(common.load(proxy.url + "/chat/completions", [BODY], clients, count))
    cpu_ms = (common.cpu_seconds(proxy.pid) - before) / through.requests * 1000
    added = (through.p50 - direct.p50) * 1000
    return [
        row(clients, "direct", direct, "", ""),
        row(clients, "sluice", through, f"{added:+.2f}", f"{cpu_ms:.3f}"),
    ]


def row(clients: int, path: str, result: common.Result, added: str, cpu: str) -> list[str]:
    return [
        str(clients),
        path,
        f"{result.rate:.0f}",
        f"{result.p50 * 1000:.2f}",
        f"{result.p99 * 1000:.2f}",
        added,
        cpu,
    ]


if __name__ == "__main__":
    main()
