"""Cache hits: requests/s and proxy CPU per hit, memory / Redis / tiered, against the bare floor.

    python -m bench.cache_hits [--seconds 5] [--connections 32]

Target (DESIGN.md §6): ≥ 20,000 hits/s on one core. The proxy is pinned to core 0 and wrk (with
a Lua script for the POST body) to core 1, so the load generator is never the bottleneck;
redis-server shares core 1 with wrk. Each row warms the entry (one miss), then runs wrk for a
fixed time; the proxy's CPU comes from /proc/<pid>/stat, and the hit count from its own
`sluice_cache_requests_total`, so a row whose requests were not hits says so. The first row is the
floor: uvicorn answering from a dict (bench.stack's `serve-hits`), what any Python proxy on this
stack can reach at best; the second is the proxy's own frame without a handler (`GET /healthz`).
Needs wrk (`apt-get install wrk`) and, for the Redis rows, redis-server (`apt-get install
redis-server`).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson

from bench import common, stack

CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "What is the capital of France? Answer briefly."}],
    "temperature": 0,
}
STREAMED = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
EMBEDDINGS = {"model": "text-embedding-3-small", "input": [f"sentence {i}" for i in range(8)]}


@contextlib.contextmanager
def redis_server(cpu: str) -> Iterator[str]:
    port = common.free_port()
    command = ["taskset", "-c", cpu, "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _answers_ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wrk(
    url: str,
    body: bytes | None,
    seconds: int,
    connections: int,
    headers: dict[str, str] | None = None,
) -> tuple[float, int, int]:
    """(requests/s, requests, non-2xx) from wrk on core 1, POSTing `body` (GET when None), with
    `headers` besides the bearer token."""
    script = 'wrk.headers["Authorization"] = "Bearer sk-bench"\n'
    for name, value in (headers or {}).items():
        # The spaces matter: `headers[[==[` would open a long string, not index the table.
        script += f"wrk.headers[ {lua_string(name.encode())} ] = {lua_string(value.encode())}\n"
    if body is not None:
        script += (
            'wrk.method = "POST"\n'
            f"wrk.body = {lua_string(body)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(script)
        f.flush()
        command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
        out = subprocess.run(
            [*command, "-s", f.name, url], capture_output=True, text=True, check=True
        ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if rate is None or total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return float(rate.group(1)), int(total.group(1)), int(errors.group(1)) if errors else 0


def lua_string(body: bytes) -> str:
    return "[==[" + body.decode() + "]==]"


def hits(proxy: common.Proxy, cache: str) -> float:
    base = proxy.url.removesuffix("/v1")
    with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = re.search(
        rf'sluice_cache_requests_total\{{cache="{cache}",result="hit"\}} ([\d.e+]+)', text
    )
    return float(found.group(1)) if found else 0.0


def warm(url: str, body: bytes) -> None:
    request = urllib.request.Request(
        url,
        data=body,
        headers={"content-type": "application/json", "authorization": "Bearer sk-bench"},
    )
    for _ in range(3):
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()


def sluice_row(
    name: str,
    config: dict[str, Any],
    env: dict[str, str],
    path: str,
    payload: dict[str, Any],
    args: argparse.Namespace,
) -> list[str]:
    body = orjson.dumps(payload)
    cache = "embeddings" if path == "/embeddings" else "chat"
    with common.sluice(config, env, cpu="0") as proxy:
        url = proxy.url + path
        warm(url, body)
        wrk(url, body, 1, args.connections)  # warm the connections and the interpreter
        hits_before, cpu_before = hits(proxy, cache), common.cpu_seconds(proxy.pid)
        rate, total, errors = wrk(url, body, args.seconds, args.connections)
        cpu = common.cpu_seconds(proxy.pid) - cpu_before
        counted = hits(proxy, cache) - hits_before
    if cache == "embeddings":
        counted /= len(payload["input"])  # counted per input
    return row(name, rate, cpu / total * 1e6, counted / total, errors)


def frame_row(config: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """`GET /healthz`: the proxy's per-request frame (routing, metrics, reply), no handler work."""
    with common.sluice(config, {}, cpu="0") as proxy:
        url = proxy.url.removesuffix("/v1") + "/healthz"
        wrk(url, None, 1, args.connections)
        before = common.cpu_seconds(proxy.pid)
        rate, total, errors = wrk(url, None, args.seconds, args.connections)
        cpu_us = (common.cpu_seconds(proxy.pid) - before) / total * 1e6
    cells = row("sluice: GET /healthz (the frame alone)", rate, cpu_us, 0.0, errors)
    cells[3] = "-"  # not a cache hit
    return cells


def row(name: str, rate: float, cpu_us: float, hit_ratio: float, errors: int) -> list[str]:
    return [name, f"{rate:,.0f}", f"{cpu_us:.0f}", f"{hit_ratio:.0%}", str(errors)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk: apt-get install -y wrk")
    rows = [
        [
            "what is served (32 connections, proxy on 1 core)",
            "hits/s",
            "CPU µs/hit",
            "hits",
            "non-2xx",
        ]
    ]
    process, url = stack.start("serve-hits", cpu="0")
    try:
        before = common.cpu_seconds(process.pid)
        rate, total, errors = wrk(url + "/", orjson.dumps(CHAT), args.seconds, args.connections)
        cpu_us = (common.cpu_seconds(process.pid) - before) / total * 1e6
        rows.append(row("floor: uvicorn + a dict", rate, cpu_us, 1.0, errors))
    finally:
        common.stop(process)
    with common.simulator("--call-log-limit", "0") as sim:
        llm = {"upstream": {"url": sim}, "batching": {"enabled": False}}
        memory = {"llm": {**llm, "cache": {"backend": "memory"}}}
        rows.append(frame_row(memory, args))
        rows.append(sluice_row("sluice memory: chat", memory, {}, "/chat/completions", CHAT, args))
        rows.append(
            sluice_row(
                "sluice memory: chat, streamed", memory, {}, "/chat/completions", STREAMED, args
            )
        )
        rows.append(
            sluice_row("sluice memory: embeddings x8", memory, {}, "/embeddings", EMBEDDINGS, args)
        )
        if shutil.which("redis-server") is None:
            print("Redis rows skipped: redis-server is not installed")
        else:
            with redis_server(cpu="1") as redis_url:
                env = {"REDIS_URL": redis_url}
                for backend in ("redis", "tiered"):
                    config = {"llm": {**llm, "cache": {"backend": backend}}}
                    name = f"sluice {backend}: chat"
                    rows.append(sluice_row(name, config, env, "/chat/completions", CHAT, args))
    print(common.table(rows))


if __name__ == "__main__":
    main()
