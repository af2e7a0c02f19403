"""tools/list across 10 MCP servers: Sluice's gateway against the official client's own fan-out
and fastmcp's multi-server proxy, all in one run.

    python -m bench.mcp [--quick]

Targets (DESIGN.md §6, issue 10): cold (the first list after the proxy started) ≈ the slowest
server, not the sum: ≤ slowest + 10 ms; warm ≤ 1 ms at p50 at the proxy; ≥ 5,000 warm lists/s
on one core; through the official client (`mcp.Client`, both `mode="auto"` and `"legacy"`) a
warm merged list of 10 servers no slower than that client's list of ONE server directly.

Ten `MCPServer`s (three tools each, `bench.mcp_servers`, one process of their own) answer
tools/list after 50, 67, ... 200 ms; an eleventh, without the delay, is the direct baseline.
Sluice (pinned to core 0) caches each server's list and merges them as `<server>.<tool>`:

* raw rows: the stateless 2026-07-28 POST the SDK sends, from aiohttp (one connection,
  sequential calls), and from wrk (32 connections, core 1) for lists/s and proxy CPU per list;
  the cold target is judged against the slowest server measured alone with the same POST;
* client rows: `mcp.Client` through Sluice vs the same client to an undelayed server of three
  tools (the target's baseline) and to one listing the same 30 tools Sluice merges (what the
  client's own per-tool work costs), measured in alternating blocks. Every answer here says
  `ttlMs: 0`, so the client's response cache never answers for the wire. The client is warmed
  up in-process first (imports, pydantic schemas) so no cold number pays for it;
* peers: the client fanning out itself (`mcp.ClientSessionGroup`, the SDK's aggregator, which
  connects one server after another and re-lists through each session; and 10 `mcp.Client`s
  gathered), and fastmcp's `create_proxy` over an `MCPConfig` of the 10 servers (pinned
  version, in its own venv under ~/.cache/sluice/bench, made on first use: a peer never shapes
  the project's environment). Cold, for the client rows, is connect + the first merged list.

The last column is Sluice's number divided by the row's (cold by cold, warm mean by warm mean,
same client mode), so under 1 means Sluice is faster. Loopback only; every process started
here is stopped on the way out, Ctrl-C included. `--quick` runs fewer rounds (under a minute).
Needs wrk (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import pathlib
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

import aiohttp
import mcp
import orjson
from mcp.client.session_group import StreamableHttpParameters

from bench import cache_hits, common

SERVERS = 10
TOOLS_PER_SERVER = 3
DELAYS_MS = [round(50 + 150 * i / (SERVERS - 1)) for i in range(SERVERS)]
SLOWEST_MS = max(DELAYS_MS)
FASTMCP = "4.1.6"
FASTMCP_VENV = pathlib.Path.home() / ".cache" / "sluice" / "bench" / f"fastmcp-{FASTMCP}"
MODERN = "2026-07-28"
HEADERS = {
    "content-type": "application/json",
    "mcp-protocol-version": MODERN,
    "mcp-method": "tools/list",
    "accept": "application/json, text/event-stream",
}
WRK_HEADERS = {name: value for name, value in HEADERS.items() if name != "content-type"}
"""wrk's script sets the content type itself."""
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
BODY = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}})
CALL_TIMEOUT = 60.0
"""Seconds any one measurement may take: a stuck peer fails the run instead of hanging it."""

Mode = Literal["auto", "legacy"]
MODES: tuple[Mode, ...] = ("auto", "legacy")


@dataclasses.dataclass(frozen=True)
class Plan:
    cold_runs: int
    """Fresh proxies per cold number (the median is shown)."""
    raw_calls: int
    wrk_seconds: int
    client_calls: int
    peer_calls: int
    """Warm calls of a peer, each ≈ the slowest server."""


FULL = Plan(cold_runs=3, raw_calls=2000, wrk_seconds=5, client_calls=200, peer_calls=20)
QUICK = Plan(cold_runs=1, raw_calls=500, wrk_seconds=2, client_calls=100, peer_calls=5)


@dataclasses.dataclass
class Row:
    """One path's numbers, in seconds; None where the path has no such number."""

    name: str
    cold: float | None = None
    warm: common.Result | None = None
    baseline: Row | None = None
    """The Sluice row this one is compared to (None for Sluice's own rows)."""
    target: str = ""


# --- processes ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Servers:
    delayed: list[str]
    direct: str
    """One server of three tools, no delay: the target's baseline."""
    wide: str
    """One server listing the same 30 tools Sluice merges, no delay: what the client's own
    work on a list that long costs, with no gateway in the way."""


@contextlib.contextmanager
def mcp_servers() -> Iterator[Servers]:
    ports = [common.free_port() for _ in range(SERVERS + 2)]
    specs = [f"{port}:{delay}" for port, delay in zip(ports, DELAYS_MS, strict=False)]
    specs += [f"{ports[-2]}:0", f"{ports[-1]}:0:{SERVERS}"]
    urls = [f"http://127.0.0.1:{port}/mcp" for port in ports]
    process = common.spawn([sys.executable, "-m", "bench.mcp_servers", *specs], urls[-1])
    try:
        for url in urls:
            common.wait_http(url)
        yield Servers(urls[:SERVERS], urls[-2], urls[-1])
    finally:
        common.stop(process)


@contextlib.contextmanager
def sluice(servers: Servers, cpu: str | None = None) -> Iterator[common.Proxy]:
    """The proxy with an `mcp` section of the 10 servers; yields its `/mcp` URL and pid."""
    config = {
        "mcp": {
            "servers": [{"name": f"s{i}", "url": url} for i, url in enumerate(servers.delayed)],
            "toolsListTtlSeconds": 300,
        },
        # Its own port: the default admin port may be taken on a shared machine.
        "admin": {"port": common.free_port()},
    }
    with common.sluice(config, cpu=cpu) as proxy:
        yield common.Proxy(proxy.url.removesuffix("/v1") + "/mcp", proxy.pid)


def fastmcp_python() -> pathlib.Path:
    """The interpreter of fastmcp's venv, made (pinned) on first use."""
    python = FASTMCP_VENV / "bin" / "python"
    installed = FASTMCP_VENV / ".installed"
    if not installed.exists():
        print(f"making {FASTMCP_VENV} (once) ...", file=sys.stderr)
        shutil.rmtree(FASTMCP_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(FASTMCP_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", f"fastmcp=={FASTMCP}"]
        subprocess.run(pip, check=True, timeout=900)
        installed.touch()  # last: an install cut short is redone, not used
    return python


@contextlib.contextmanager
def fastmcp(servers: Servers) -> Iterator[str]:
    port = common.free_port()
    command = [str(fastmcp_python()), "-m", "bench.fastmcp_proxy", str(port), *servers.delayed]
    url = f"http://127.0.0.1:{port}/mcp"
    process = common.spawn(command, url)
    try:
        yield url
    finally:
        common.stop(process)


# --- measurements ---------------------------------------------------------------------------


def run(measurement: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(CALL_TIMEOUT):
            return await measurement

    return asyncio.run(bounded())


def expect_tools(count: int, where: str) -> None:
    if count != SERVERS * TOOLS_PER_SERVER:
        raise RuntimeError(f"{where}: {count} tools, not {SERVERS * TOOLS_PER_SERVER}")


async def raw_list(session: aiohttp.ClientSession, url: str) -> float:
    """One stateless tools/list; its seconds."""
    started = time.perf_counter()
    async with session.post(url, data=BODY, headers=HEADERS) as answer:
        body = await answer.read()
    elapsed = time.perf_counter() - started
    if answer.status != 200:
        raise RuntimeError(f"{url}: {answer.status} {body[:300]!r}")
    expect_tools(len(orjson.loads(body)["result"]["tools"]), "sluice, raw")
    return elapsed


async def raw_cold(url: str) -> float:
    async with aiohttp.ClientSession() as session:
        return await raw_list(session, url)


async def raw_warm(url: str, calls: int) -> common.Result:
    async with aiohttp.ClientSession() as session:
        for _ in range(20):  # the connection, the interpreter's caches
            await raw_list(session, url)
    return await common.load(url, [BODY], 1, calls, HEADERS)


async def timed(calls: int, call: Callable[[], Awaitable[None]]) -> common.Result:
    latencies = []
    started = time.perf_counter()
    for _ in range(calls):
        begun = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - begun)
    return common.Result(calls, time.perf_counter() - started, latencies, 0)


async def client_cold(url: str, mode: Mode, where: str) -> float:
    """Connect + the first list, through one `mcp.Client`."""
    started = time.perf_counter()
    async with mcp.Client(url, mode=mode) as client:
        tools = await client.list_tools()
    elapsed = time.perf_counter() - started
    expect_tools(len(tools.tools), where)
    return elapsed


async def clients_warm(
    urls: dict[str, str], mode: Mode, calls: int, block: int = 10, warmup: int = 5
) -> dict[str, common.Result]:
    """Warm lists through one `mcp.Client` per URL, measured in alternating blocks of `block`
    calls, so load from other work on the machine falls on every URL alike."""
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for name, url in urls.items():
            clients[name] = await stack.enter_async_context(mcp.Client(url, mode=mode))
            for _ in range(warmup):
                await clients[name].list_tools()
        latencies: dict[str, list[float]] = {name: [] for name in urls}
        spent = dict.fromkeys(urls, 0.0)
        block = min(block, calls)
        for _ in range(calls // block):
            for name, client in clients.items():

                async def call(c: mcp.Client = client) -> None:
                    await c.list_tools()

                result = await timed(block, call)
                latencies[name] += result.latencies
                spent[name] += result.seconds
        return {
            name: common.Result(len(latencies[name]), spent[name], latencies[name], 0)
            for name in urls
        }


async def expect_listed(url: str, mode: Mode, tools: int) -> None:
    async with mcp.Client(url, mode=mode) as client:
        listed = await client.list_tools()
    if len(listed.tools) != tools:
        raise RuntimeError(f"{url}: {len(listed.tools)} tools, not {tools}")


async def raw_server(url: str, calls: int) -> tuple[float, common.Result]:
    """The slowest server alone, sent the same stateless POST: the floor of any cold list."""
    async with aiohttp.ClientSession() as session:

        async def call() -> float:
            started = time.perf_counter()
            async with session.post(url, data=BODY, headers=HEADERS) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"{url}: {answer.status}")
            return time.perf_counter() - started

        cold = await call()

        async def again() -> None:
            await call()

        return cold, await timed(calls, again)


async def client_warm(url: str, mode: Mode, calls: int, warmup: int) -> common.Result:
    return (await clients_warm({url: url}, mode, calls, warmup=warmup))[url]


async def session_group(urls: list[str], calls: int) -> tuple[float, common.Result]:
    """`mcp.ClientSessionGroup`: cold is connecting to every server (it lists each on the way);
    warm is re-listing through every session at once (`group.tools` is a snapshot taken at
    connect time and never refreshed)."""
    started = time.perf_counter()
    async with mcp.ClientSessionGroup(component_name_hook=lambda n, s: f"{s.name}.{n}") as group:
        for url in urls:
            await group.connect_to_server(StreamableHttpParameters(url=url))
        cold = time.perf_counter() - started
        expect_tools(len(group.tools), "ClientSessionGroup")

        async def call() -> None:
            await asyncio.gather(*(session.list_tools() for session in group.sessions))

        await call()
        return cold, await timed(calls, call)


async def gathered_clients(urls: list[str], mode: Mode, calls: int) -> tuple[float, common.Result]:
    """10 `mcp.Client`s: entered one after another (each holds a task group, which must be left
    by the task that entered it), then every list gathered."""
    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(mcp.Client(url, mode=mode)) for url in urls]

        async def listed() -> int:
            answers = await asyncio.gather(*(client.list_tools() for client in clients))
            return sum(len(answer.tools) for answer in answers)

        expect_tools(await listed(), f"10 mcp.Client, {mode}")
        cold = time.perf_counter() - started

        async def call() -> None:
            await listed()

        return cold, await timed(calls, call)


def median_cold(plan: Plan, once: Callable[[], float]) -> float:
    return statistics.median(once() for _ in range(plan.cold_runs))


# --- the rows -------------------------------------------------------------------------------


def sluice_rows(
    servers: Servers, plan: Plan, connections: int
) -> tuple[list[Row], dict[str, Row], list[str]]:
    """(Sluice's rows with their direct baselines, Sluice's client rows by mode, its wrk row)."""

    def cold(measure: Callable[[str], Awaitable[float]]) -> float:
        with sluice(servers, cpu="0") as proxy:
            return float(run(measure(proxy.url)))

    slowest = Row(f"direct: raw stateless POST, the slowest server ({SLOWEST_MS} ms) alone")
    slowest_cold, slowest.warm = run(raw_server(servers.delayed[-1], plan.peer_calls))
    raw_cold_seconds = median_cold(plan, lambda: cold(raw_cold))
    slowest.cold = slowest_cold
    raw = Row("sluice: raw stateless POST (aiohttp, sequential)", cold=raw_cold_seconds)
    slowest.baseline = raw
    rows = [slowest, raw]
    by_mode: dict[str, Row] = {}
    for mode in MODES:

        def through_client(url: str, m: Mode = mode) -> Awaitable[float]:
            return client_cold(url, m, "sluice")

        row = Row(f"sluice: mcp.Client {mode}, 10 servers merged")
        row.cold = median_cold(plan, functools.partial(cold, through_client))
        by_mode[mode] = row
    with sluice(servers, cpu="0") as proxy:
        run(raw_cold(proxy.url))  # every server's list cached: warm from here on
        raw.warm = raw_warm_result = run(raw_warm(proxy.url, plan.raw_calls))
        added = raw_cold_seconds - slowest_cold
        raw.target = "; ".join(
            [
                judge(added <= 0.010, f"cold ≤ slowest alone + 10 ms ({added * 1000:+.1f})"),
                judge(raw_warm_result.p50 <= 0.001, "p50 ≤ 1 ms"),
            ]
        )
        cache_hits.wrk(proxy.url, BODY, 1, connections, WRK_HEADERS)  # warm the connections
        before = common.cpu_seconds(proxy.pid)
        rate, total, errors = cache_hits.wrk(
            proxy.url, BODY, plan.wrk_seconds, connections, WRK_HEADERS
        )
        cpu_us = (common.cpu_seconds(proxy.pid) - before) / total * 1e6
        for mode in MODES:
            run(expect_listed(servers.direct, mode, TOOLS_PER_SERVER))
            run(expect_listed(servers.wide, mode, SERVERS * TOOLS_PER_SERVER))
            urls = {"sluice": proxy.url, "direct": servers.direct, "wide": servers.wide}
            warm = run(clients_warm(urls, mode, plan.client_calls))
            by_mode[mode].warm = warm["sluice"]
            direct = Row(f"direct: mcp.Client {mode}, ONE server, no delay", warm=warm["direct"])
            direct.baseline = by_mode[mode]
            direct.target = judge(warm["sluice"].mean <= warm["direct"].mean, "sluice no slower")
            wide = Row(f"direct: mcp.Client {mode}, ONE server of the same 30 tools")
            wide.warm, wide.baseline = warm["wide"], by_mode[mode]
            rows += [by_mode[mode], direct, wide]
    throughput = [
        f"sluice, warm, {connections} connections, proxy on 1 core",
        f"{rate:,.0f}",
        f"{cpu_us:.0f}",
        str(errors),
        judge(rate >= 5000, "≥ 5,000/s"),
    ]
    return rows, by_mode, throughput


def peer_rows(servers: Servers, plan: Plan, sluice_by_mode: dict[str, Row]) -> list[Row]:
    rows = []
    group = Row(
        "peer: mcp.ClientSessionGroup (legacy), 10 servers", baseline=sluice_by_mode["legacy"]
    )
    group.cold, group.warm = run(session_group(servers.delayed, plan.peer_calls))
    rows.append(group)
    for mode in MODES:
        row = Row(f"peer: 10 mcp.Client {mode}, gathered", baseline=sluice_by_mode[mode])
        row.cold, row.warm = run(gathered_clients(servers.delayed, mode, plan.peer_calls))
        rows.append(row)
    for mode in MODES:
        row = Row(
            f"peer: fastmcp {FASTMCP} proxy, mcp.Client {mode}", baseline=sluice_by_mode[mode]
        )
        colds = []
        for k in range(plan.cold_runs):
            with fastmcp(servers) as url:
                colds.append(run(client_cold(url, mode, "fastmcp")))
                if k == plan.cold_runs - 1:  # each of its lists takes a while: warm up once
                    row.warm = run(client_warm(url, mode, plan.peer_calls, warmup=1))
        row.cold = statistics.median(colds)
        rows.append(row)
    return rows


# --- the tables -----------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs <= 0:
        return "-"
    share = ours / theirs
    return f"{share:.2f}x" if share >= 0.01 else f"{share:.4f}x"


def judge(met: bool, target: str) -> str:
    return f"{target}: {'met' if met else 'MISSED'}"


def latency_cells(row: Row) -> list[str]:
    warm = row.warm
    base = row.baseline
    compared = "-"
    if base is not None:
        cold = ratio(base.cold, row.cold)
        mean = ratio(base.warm.mean if base.warm else None, warm.mean if warm else None)
        compared = f"{cold} / {mean}"
    return [
        row.name,
        ms(row.cold),
        ms(warm.mean if warm else None),
        ms(warm.p50 if warm else None),
        ms(warm.p99 if warm else None),
        compared,
        row.target,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, under a minute")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk: apt-get install -y wrk")
    plan = QUICK if args.quick else FULL
    fastmcp_python()  # before the clock starts: the first run makes the venv
    with mcp_servers() as servers:
        # The first `mcp.Client` of a process pays for imports and pydantic's schema building
        # (~100 ms): paid here, so no cold number counts it.
        for mode in MODES:
            run(client_cold(servers.wide, mode, "warm-up"))
        ours, by_mode, throughput = sluice_rows(servers, plan, args.connections)
        peers = peer_rows(servers, plan, by_mode)
    head = f"tools/list, {SERVERS} servers held {DELAYS_MS[0]}-{SLOWEST_MS} ms"
    rows = [[head, "cold ms", "warm mean", "p50", "p99", "sluice ÷ this: cold / warm", "target"]]
    rows += [latency_cells(row) for row in [*ours, *peers]]
    print(common.table(rows))
    print()
    print(common.table([["warm lists", "lists/s", "CPU µs/list", "non-2xx", "target"], throughput]))


if __name__ == "__main__":
    main()
