"""Garbage-collector pressure per 10,000 requests, with and without each lever.

    python -m bench.gcpressure [--requests 10000]         (prints a table)

The proxy's ASGI app is driven in-process (no server, no sockets on the caller's side; the
pass-through path still calls a real simulator over loopback), 32 requests at a time, so what
is measured is the app's own work. Each variant runs in a fresh interpreter, because
`gc.freeze()` and the thresholds are global:

* `no GC levers`: the app with CPython's defaults (`sluice proxy` tunes the GC once started,
  `server.tune_gc`; this in-process app does not);
* `pooled replies`: `bench.pool.ObjectPool` applied to the objects every whole reply
  makes (its header list and its two ASGI message dicts), swapped in for this run only;
* `gc.freeze()`: everything alive after start-up moved to the permanent generation;
* `thresholds`: `gc.set_threshold(10_000, 20, 20)` (CPython's default is 700, 10, 10);
* `both GC levers`: the two above together.

Per variant: collections per generation and the time spent in them (`gc.callbacks`), peak
traced memory and the blocks still allocated afterwards (`tracemalloc`), and CPU per request
(`time.process_time`, measured in a second run without tracemalloc, which slows every
allocation several-fold).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import orjson

from bench import common, pool
from sluice.api import ProxyConfig
from sluice.proxy import app as proxy_app
from sluice.proxy import server
from sluice.proxy.http import asgi

VARIANTS = ("no GC levers", "pooled replies", "gc.freeze()", "thresholds", "both GC levers")
PATHS = ("cache hit", "pass-through")
BODY = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
)
HEADERS = [
    (b"host", b"127.0.0.1"),
    (b"content-type", b"application/json"),
    (b"authorization", b"Bearer sk-bench"),
    (b"content-length", str(len(BODY)).encode()),
]


# --- the pooled variant -----------------------------------------------------------------------

HEADER_LISTS: pool.ObjectPool[asgi.Headers] = pool.ObjectPool(list, list.clear, 256)
MESSAGES: pool.ObjectPool[dict[str, Any]] = pool.ObjectPool(dict, dict.clear, 512)
shipped_send_reply = asgi.send_reply


async def pooled_send_reply(
    send: asgi.Send, reply: asgi.Reply, receive: asgi.Receive | None = None
) -> None:
    """`asgi.send_reply` with its per-reply objects taken from pools (servers do not keep the
    messages they are sent: uvicorn reads them and lets go)."""
    if reply.stream is not None:
        await shipped_send_reply(send, reply, receive)
        return
    headers = HEADER_LISTS.acquire()
    headers += reply.headers
    headers.append((b"content-length", str(len(reply.body)).encode()))
    start = MESSAGES.acquire()
    start.update(type="http.response.start", status=reply.status, headers=headers)
    body = MESSAGES.acquire()
    body.update(type="http.response.body", body=reply.body)
    try:
        await send(start)
        await send(body)
    finally:
        MESSAGES.release(start)
        MESSAGES.release(body)
        HEADER_LISTS.release(headers)


# --- one variant, in its own interpreter ------------------------------------------------------


class Collections:
    """Counts and times the collector's runs per generation, through `gc.callbacks`."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.counts[info["generation"]] += 1
            self.seconds[info["generation"]] += time.perf_counter() - self._started


async def call(app: proxy_app.ProxyApp) -> int:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query_string": b"",
        "headers": HEADERS,
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def drive(app: proxy_app.ProxyApp, requests: int) -> None:
    for _ in range(requests // 32):
        statuses = await asyncio.gather(*(call(app) for _ in range(32)))
        if any(status != 200 for status in statuses):
            raise RuntimeError(f"a request failed: {statuses}")


async def variant(name: str, path: str, upstream: str, requests: int) -> dict[str, Any]:
    cache = {"backend": "memory"} if path == "cache hit" else {"mode": "off"}
    llm = {"upstream": {"url": upstream}, "batching": {"enabled": False}, "cache": cache}
    listen = {"host": "127.0.0.1", "port": 1}  # never bound: no server here
    config = {"llm": llm, "listen": listen, "admin": {"port": common.free_port()}}
    app = proxy_app.ProxyApp(ProxyConfig.model_validate(config))
    if name == "pooled replies":
        proxy_app.send_reply = pooled_send_reply  # type: ignore[assignment]
    await app.startup()
    try:
        await drive(app, 320)  # warm: the cache entry, connections, the interpreter's caches
        if name in ("gc.freeze()", "both GC levers"):
            gc.collect()
            gc.freeze()
        if name in ("thresholds", "both GC levers"):
            gc.set_threshold(*server.GC_THRESHOLDS)
        started = time.process_time()
        await drive(app, requests)
        cpu = time.process_time() - started
        collections = Collections()
        gc.callbacks.append(collections)
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        await drive(app, requests)
        _, peak = tracemalloc.get_traced_memory()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        gc.callbacks.remove(collections)
    finally:
        await app.shutdown()
    kept = sum(stat.count_diff for stat in after.compare_to(before, "filename"))
    return {
        "cpu_us": cpu / requests * 1e6,
        "collections": collections.counts,
        "gc_ms": [s * 1000 for s in collections.seconds],
        "peak_kb": peak / 1024,
        "blocks_kept": kept,
    }


def run(name: str, path: str, upstream: str, requests: int) -> dict[str, Any]:
    """One variant in a fresh interpreter, its result as a dict."""
    command = [sys.executable, "-m", "bench.gcpressure", "--variant", name, "--path", path]
    command += ["--upstream", upstream, "--requests", str(requests)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"gcpressure {name} / {path} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def measure(upstream: str, requests: int) -> list[dict[str, Any]]:
    """Every variant on every path, as rows for the report."""
    rows = []
    for path in PATHS:
        for name in VARIANTS:
            rows.append({"path": path, "variant": name, **run(name, path, upstream, requests)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--path", choices=PATHS)
    parser.add_argument("--upstream")
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    if args.variant is not None:
        import uvloop

        result = uvloop.run(variant(args.variant, args.path, args.upstream, args.requests))
        print(json.dumps(result))
        return
    with common.simulator("--call-log-limit", "0") as sim:
        for row in measure(sim, args.requests):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
