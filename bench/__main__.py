"""The whole bench in one run: the simulator, Sluice and LiteLLM's proxy, each scenario against
each system in turn; writes `docs/benchmarks.md` and `docs/benchmarks.png`.

    python -m bench [--quick] [--out docs]       (make bench / make bench-quick)

`--quick` is the same run with fewer requests and shorter loads, and without the 10-minute
soak: under 3 minutes. The full run fits in 15 minutes on 2 cores. Loopback only; every process
started here is stopped on the way out, Ctrl-C included. Needs wrk, redis-server and the bench
extra (`pip install -e '.[bench]'`); LiteLLM installs itself on first use (`bench.litellm`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import orjson

from bench import cache_hits, common, gcpressure, litellm, profiles, scenarios, stack
from bench.report import Report, Scenario, Target, markdown_table, number
from bench.scenarios import Plan
from sluice.proxy import server

SIM = ["--latency-ms", "20", "--call-log-limit", "0"]
PLAIN = {"batching": {"enabled": False}, "cache": {"mode": "off"}}
POOL = {"maxConnections": 2000, "maxKeepaliveConnections": 200}
"""Room for the 1,000 requests of the memory scenario; LiteLLM's pool is not limited lower."""


@contextlib.contextmanager
def floor_proxy(upstream: str) -> Iterator[common.Proxy]:
    """The smallest possible pass-through proxy (`bench.stack`), on core 0."""
    process, url = stack.start("serve-aiohttp", upstream + "/chat/completions", cpu="0")
    try:
        yield common.Proxy(url + "/v1", process.pid)
    finally:
        common.stop(process)


def sluice(sim: str, **llm: Any) -> contextlib.AbstractContextManager[common.Proxy]:
    config = {"llm": {"upstream": {"url": sim}, "pool": POOL, **llm}}
    return common.sluice(config, cpu="0")


def step(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def uncached(sim: str, plan: Plan) -> list[Scenario]:
    """Pass-through, streaming, memory and embeddings: Sluice and LiteLLM without caches."""
    out = []
    with (
        floor_proxy(sim) as floor,
        sluice(sim, **PLAIN) as ours,
        litellm.proxy(sim, cpu="0") as lite,
    ):
        systems: dict[str, common.Proxy | None] = {"direct": None, "minimal proxy": floor}
        systems |= {"sluice": ours, "litellm": lite}
        for clients in (1, 32):
            step(f"chat pass-through, {clients} clients")
            out.append(scenarios.passthrough(clients, systems, plan, sim))
        step("streamed chat")
        common.configure_simulator(sim, stream_chunk_delay_ms=2)
        streamers = {"direct": None, "sluice": ours, "litellm": lite}
        out.append(scenarios.streaming(streamers, plan, sim))
        step("memory, 1,000 in flight")
        common.configure_simulator(sim, stream_chunk_delay_ms=0, latency_ms=4000)
        out.append(scenarios.memory({"sluice": ours, "litellm": lite}))
        step("embeddings")
        common.configure_simulator(sim, latency_ms=20, per_input_latency_ms=0.05)
        batching = {"maxBatchSize": 32, "maxWaitMilliseconds": 10}
        with sluice(sim, batching=batching, cache={"mode": "off"}) as batcher:
            embedders = {"direct": None, "sluice coalescing": batcher, "litellm": lite}
            out.append(scenarios.embeddings(embedders, plan, sim, sim))
        step("open-loop overload")
        common.configure_simulator(sim, per_input_latency_ms=0)
        limits = {"maxBatchSize": scenarios.OVERLOAD_IN_FLIGHT, "maxConcurrentBatches": 1}
        with sluice(sim, batching={**limits, "maxQueue": 32}, cache={"mode": "off"}) as shedder:
            out.append(scenarios.overload({"sluice": shedder, "litellm": lite}, plan))
    return out


def hits(sim: str, plan: Plan, redis_url: str) -> Scenario:
    """Cache hits from wrk, 32 connections: the floor, Sluice's three backends, LiteLLM's two."""
    scenario = Scenario(
        "Chat cache hits, 32 connections",
        "One cached chat request repeated by wrk (32 connections, core 1) against the proxy "
        "on core 0; redis-server shares core 1. The floor is uvicorn answering from a dict "
        "(`bench.stack serve-hits`): what any Python proxy on this stack can reach. The hit "
        "ratio is 1 - upstream calls / requests, counted by the simulator.",
        scenarios.hits_metrics(),
        peer="litellm local",
    )
    body = orjson.dumps(cache_hits.CHAT)

    def calls() -> int:
        return common.simulator_calls(sim, "chat")

    process, url = stack.start("serve-hits", cpu="0")
    try:
        floor = common.Proxy(url + "/v1", process.pid)
        before = common.tree_cpu_seconds(process.pid)
        rate, total, errors = cache_hits.wrk(floor.url + "/", body, plan.wrk_seconds, 32)
        cpu = (common.tree_cpu_seconds(process.pid) - before) / total * 1e6
        scenario.add(
            "floor: uvicorn + a dict", **{"hits/s": rate, "CPU/hit": cpu}, **{"non-2xx": errors}
        )
    finally:
        common.stop(process)
    env = {"REDIS_URL": redis_url}
    for backend in ("memory", "redis", "tiered"):
        step(f"cache hits, sluice {backend}")
        config = {"llm": {"upstream": {"url": sim}, "batching": {"enabled": False}}}
        config["llm"]["cache"] = {"backend": backend}
        with common.sluice(config, env, cpu="0") as ours:
            row = scenarios.wrk_row(ours, "/chat/completions", body, plan.wrk_seconds, calls)
        scenario.add(f"sluice {backend}", **row)
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    for name, cache in (
        ("local", {"type": "local"}),
        ("redis", {"type": "redis", "host": host, "port": int(port)}),
    ):
        step(f"cache hits, litellm {name}")
        with litellm.proxy(sim, cache, cpu="0") as lite:
            row = scenarios.wrk_row(lite, "/chat/completions", body, plan.wrk_seconds, calls)
        scenario.add(f"litellm {name}", **row)
    return scenario


def mcp_rows(quick: bool) -> str:
    """The MCP gateway's own bench (`bench.mcp`), its tables as printed."""
    command = [sys.executable, "-m", "bench.mcp", *(["--quick"] if quick else [])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        return f"`bench.mcp` failed:\n\n```\n{done.stderr[-1500:]}\n```"
    shown = " ".join(["python", "-m", "bench.mcp", *command[3:]])
    return f"`{shown}`, in the same run:\n\n```\n{done.stdout.strip()}\n```"


def gc_section(sim: str, requests: int) -> tuple[str, list[dict[str, Any]]]:
    rows = gcpressure.measure(sim, requests)
    cells = [
        [
            r["path"],
            r["variant"],
            f"{r['cpu_us']:.1f}",
            "/".join(str(n) for n in r["collections"]),
            "/".join(f"{ms:.1f}" for ms in r["gc_ms"]),
            f"{sum(r['gc_ms']):.1f}",
            f"{r['peak_kb']:.0f}",
            str(r["blocks_kept"]),
        ]
        for r in rows
    ]
    header = ["path", "variant", "CPU µs/req", "collections gen0/1/2", "GC ms gen0/1/2"]
    header += ["GC ms total", "peak traced KB", "blocks kept"]
    text = (
        f"`python -m bench.gcpressure --requests {requests}`: per {requests:,} requests, the app "
        "driven in-process 32 at a time (see that module's docstring), each variant in a fresh "
        "interpreter. CPU is measured without tracemalloc; the rest with it.\n\n"
        + markdown_table(header, cells)
        + "\n\n"
        + "\n".join(gc_verdicts(rows))
    )
    return text, rows


def gc_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Each lever against the run without levers, on each path: the numbers the choice rests on."""
    lines = []
    for path in gcpressure.PATHS:
        base = next(r for r in rows if r["path"] == path and r["variant"] == "no GC levers")
        for r in rows:
            if r["path"] != path or r is base:
                continue
            change = r["cpu_us"] / base["cpu_us"] - 1
            lines.append(
                f"- {path}, {r['variant']}: CPU {base['cpu_us']:.1f} → {r['cpu_us']:.1f} µs/req "
                f"({change:+.0%}; within ±5% is noise here), "
                f"GC time {sum(base['gc_ms']):.1f} → {sum(r['gc_ms']):.1f} ms."
            )
    lines.append(
        f"\nWhat the proxy keeps: `sluice proxy` calls `server.tune_gc()` once started "
        f"(`gc.freeze()` of the start-up heap, `gc.set_threshold{server.GC_THRESHOLDS}`); "
        "`ObjectPool` is applied nowhere on the hot path, since pooling the reply's objects "
        "made the in-process hit dearer, not cheaper."
    )
    return lines


def profile_section(sim: str, plan: Plan, docs: pathlib.Path) -> str:
    if profiles.py_spy() is None:
        return "Not profiled: py-spy is not installed (`pip install -e '.[bench]'`)."
    seconds = max(2, plan.wrk_seconds // 2)
    body = orjson.dumps(cache_hits.CHAT)
    parts = []
    config = {"llm": {"upstream": {"url": sim}, "batching": {"enabled": False}}}
    with common.sluice(config, cpu="0") as ours:
        url = ours.url + "/chat/completions"
        cache_hits.warm(url, body)
        load = lambda: cache_hits.wrk(url, body, int(2 * seconds + 2), 32)  # noqa: E731
        top = profiles.profile(ours, load, docs / "flame-cache-hit.svg", seconds)
        parts.append(("cache hit, memory, wrk 32 connections", "flame-cache-hit.svg", top))
    with sluice(sim, **PLAIN) as ours:
        spec = {"mode": "closed", "url": ours.url + "/chat/completions", "concurrency": 32}
        spec |= {"bodies": [scenarios.chat_body()], "requests": 10**6, "seconds": 2 * seconds + 2}
        load = lambda: scenarios.loadgen.run(spec)  # noqa: E731
        top = profiles.profile(ours, load, docs / "flame-passthrough.svg", seconds)
        parts.append(("pass-through, 32 clients", "flame-passthrough.svg", top))
    out = []
    for what, svg, top in parts:
        rows = [[f"`{frame}`", f"{share:.1%}"] for frame, share in top]
        out.append(
            f"**{what}** ([{svg}]({svg})), top self-time frames:\n\n"
            + markdown_table(["frame", "samples"], rows)
        )
    return "py-spy, 250 samples/s, on the running proxy.\n\n" + "\n\n".join(out)


def versions() -> str:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    tools = []
    for tool, flag in (("wrk", "-v"), ("redis-server", "--version")):
        found = shutil.which(tool)
        out = (
            subprocess.run([found, flag], capture_output=True, text=True, check=False)
            if found
            else None
        )
        tools.append(
            f"{tool} {(out.stdout or out.stderr).split(chr(10))[0][:60] if out else 'absent'}"
        )
    packages = ", ".join(
        f"{p} {version(p)}"
        for p in ("sluice-operator", "uvicorn", "uvloop", "httptools", "aiohttp", "orjson")
    )
    peer = f"LiteLLM {litellm.VERSION} (`litellm[proxy]`, own venv)"
    return f"Python {platform.python_version()}; {packages}; {peer}; {'; '.join(tools)}."


def machine(before: tuple[float, ...], after: tuple[float, ...]) -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = lambda values: ", ".join(f"{v:.2f}" for v in values)  # noqa: E731
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} x {model}. "
        f"Load average (1, 5, 15 min) before the run: {load(before)}; after: {load(after)}. "
        "The machine was shared with other engineers' test runs, so absolute numbers are noisy; "
        "every ratio below is between figures of this one run."
    )


def targets(found: dict[str, Scenario], soak: Scenario | None) -> list[Target]:
    one, many = found["pass-through 1"], found["pass-through 32"]
    hit, emb, mem = found["hits"], found["embeddings"], found["memory"]
    over = found["overload"]

    def get(s: Scenario, system: str, metric: str) -> float | None:
        return s.value(system, metric)

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def sub(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    in_flight = f"RSS, {scenarios.IN_FLIGHT:,} in flight"
    shed = get(over, "sluice", "429s") or 0
    out = [
        Target(
            "added p50 at 1 client, over the minimal proxy's",
            sub(get(one, "sluice", "added p50"), get(one, "minimal proxy", "added p50")),
            0.2,
            "lower",
            " ms",
        ),
        Target(
            "pass-through proxy CPU per request, 32 clients",
            get(many, "sluice", "proxy CPU/req"),
            0.35,
            "lower",
            " ms",
        ),
        Target(
            "proxy CPU per uncached request: times lower than LiteLLM's",
            div(get(many, "litellm", "proxy CPU/req"), get(many, "sluice", "proxy CPU/req")),
            40,
            "higher",
            "x",
        ),
        Target(
            "memory cache hits/s on one core",
            get(hit, "sluice memory", "hits/s"),
            20000,
            "higher",
            "/s",
            f"floor in the same run: {number(get(hit, 'floor: uvicorn + a dict', 'hits/s'))}/s",
        ),
        Target(
            "cache hits/s: times LiteLLM's (local cache)",
            div(get(hit, "sluice memory", "hits/s"), get(hit, "litellm local", "hits/s")),
            150,
            "higher",
            "x",
        ),
        Target(
            "embeddings: upstream calls, times fewer than LiteLLM's",
            div(
                get(emb, "litellm", "calls per 100 req"),
                get(emb, "sluice coalescing", "calls per 100 req"),
            ),
            0.9 * 32,
            "higher",
            "x",
            "0.9 x maxBatchSize 32",
        ),
        Target(
            "embeddings: added p50 over direct",
            sub(get(emb, "sluice coalescing", "p50"), get(emb, "direct", "p50")),
            12,
            "lower",
            " ms",
            "maxWaitMilliseconds 10 + 2",
        ),
        Target(
            "RSS with 1,000 in flight: share of LiteLLM's",
            div(get(mem, "sluice", in_flight), get(mem, "litellm", in_flight)),
            0.25,
            "lower",
            "",
        ),
        Target(
            "overload: errors after the overload ends (Sluice)",
            get(over, "sluice", "recovery errors"),
            0,
            "lower",
            "",
            f"{shed:.0f} requests shed with 429 during it",
        ),
    ]
    if soak is not None:
        out.append(
            Target("soak: RSS drift", get(soak, "sluice memory", "RSS drift"), 5, "lower", "%")
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, no soak: < 3 min")
    parser.add_argument("--out", type=pathlib.Path, default=common.ROOT / "docs")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"needs {tool}: apt-get install -y {'util-linux' if tool == 'taskset' else tool}"
            )
    plan = scenarios.QUICK if args.quick else scenarios.FULL
    args.out.mkdir(parents=True, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard)
    )  # 1,000 in flight, 3 sockets each
    litellm.ensure()  # before the clock starts: the first run installs it
    started, load_before = time.monotonic(), os.getloadavg()
    command = "make bench-quick" if args.quick else "make bench"
    flag = " --quick" if args.quick else ""
    with common.simulator(*SIM) as sim:
        found = dict(
            zip(
                [
                    "pass-through 1",
                    "pass-through 32",
                    "streaming",
                    "memory",
                    "embeddings",
                    "overload",
                ],
                uncached(sim, plan),
                strict=True,
            )
        )
        common.configure_simulator(sim, latency_ms=20)
        with cache_hits.redis_server(cpu="1") as redis_url:
            found["hits"] = hits(sim, plan, redis_url)
        step("GC levers and the object pool")
        gc_text, _ = gc_section(sim, plan.gc_requests)
        step("profiles")
        profile_text = profile_section(sim, plan, args.out)
        soak = None
        if plan.soak_seconds:
            step(f"soak, {plan.soak_seconds / 60:g} minutes")
            with sluice(sim, batching={"enabled": False}, cache={"backend": "memory"}) as ours:
                soak = scenarios.soak(ours, plan.soak_seconds)
    step("MCP tools/list")
    mcp_text = mcp_rows(args.quick)
    order = [
        "pass-through 1",
        "pass-through 32",
        "hits",
        "streaming",
        "embeddings",
        "overload",
        "memory",
    ]
    shown = [found[name] for name in order] + ([soak] if soak else [])
    elapsed = time.monotonic() - started
    preamble = [
        f"Written by `{command}` (`.venv/bin/python -m bench{flag}`) on "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} minutes; "
        "do not edit by hand. Every figure beside its target, and every ratio to LiteLLM, comes "
        "from this one run. `vs LiteLLM` is how many times better than LiteLLM's row a row is "
        "on the scenario's chart metric (for latency, CPU and memory: LiteLLM's ÷ ours).",
        f"**Machine.** {machine(load_before, os.getloadavg())}",
        f"**Versions.** {versions()}",
        "**Commands.** `make bench` (full, with the 10-minute soak; ≤ 15 min), `make bench-quick` "
        "(< 3 min, no soak), or `.venv/bin/python -m bench [--quick]`. The parts alone: "
        "`python -m bench.gcpressure`, `python -m bench.mcp`, `python -m bench.cache_hits`.",
    ]
    sections = [
        ("GC pressure and the object pool", gc_text),
        ("Profile", profile_text),
        ("MCP tools/list, 10 servers", mcp_text),
    ]
    report = Report(
        "Benchmarks: Sluice side by side with LiteLLM",
        preamble,
        targets(found, soak),
        shown,
        sections,
    )
    for path in report.write(args.out):
        print(path)


if __name__ == "__main__":
    main()
