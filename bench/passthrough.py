"""Pass-through overhead: direct to the simulator vs through Sluice, at 1 and 32 clients.

    python -m bench.passthrough [--requests 2000] [--latency-ms 20]

Targets (DESIGN.md §6): ≤ 1 ms added at p50 with one client; ≤ 0.5 ms proxy CPU per request.
Batching and caching are off: this measures the proxy's own cost on the plain path. A third row,
the smallest possible proxy (20 lines of ASGI + aiohttp, from bench.stack), is the floor the
machine sets: on a VM where a loopback write costs a context switch, most of the CPU per
request at one client is the kernel's, and that row shows how much.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson

from bench import common, stack

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
        floor_process, floor_url = stack.start("serve-aiohttp", sim + "/chat/completions")
        floor = common.Proxy(floor_url + "/v1", floor_process.pid)
        try:
            with common.sluice(config) as proxy:
                for clients in (1, 32):
                    count = args.requests if clients > 1 else args.requests // 4
                    direct = asyncio.run(
                        common.load(sim + "/chat/completions", [BODY], clients, count)
                    )
                    rows.append(row(clients, "direct", direct, "", ""))
                    rows.append(measure("minimal proxy", floor, clients, count, direct))
                    rows.append(measure("sluice", proxy, clients, count, direct))
        finally:
            common.stop(floor_process)
    print(common.table(rows))


def measure(
    name: str, proxy: common.Proxy, clients: int, count: int, direct: common.Result
) -> list[str]:
    url = proxy.url + "/chat/completions"
    # Warm the path (connections, the interpreter's caches) before measuring.
    asyncio.run(common.load(url, [BODY], clients, clients * 4))
    before = common.cpu_seconds(proxy.pid)
    through = asyncio.run(common.load(url, [BODY], clients, count))
    cpu_ms = (common.cpu_seconds(proxy.pid) - before) / through.requests * 1000
    added = (through.p50 - direct.p50) * 1000
    return row(clients, name, through, f"{added:+.2f}", f"{cpu_ms:.3f}")


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
