"""The load generator: an aiohttp client in a process of its own, so it never shares the
interpreter (or, pinned, the core) of the proxy it measures.

    python -m bench.loadgen < spec.json        (prints one JSON result)

Three shapes, all bounded in requests and in time:

* `closed`: `concurrency` workers, each sending its next request when its last one answered,
  until `requests` are done or `seconds` have passed;
* `open`: requests started on a fixed schedule (`rate` per second for `seconds`) whether or not
  earlier ones answered, at most `max_outstanding` at once (beyond it a request counts as
  `dropped`, a bound on the generator, never a silent queue); each latency is measured from the
  request's scheduled start, so a stalled server cannot hide its backlog (coordinated omission);
* `stream`: closed-loop streamed chats, timing the first SSE event and the spacing of the rest.

`run(spec)` is the driver's side: it starts this module pinned to `cpu` and returns the result.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import aiohttp

HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}


def run(spec: dict[str, Any], cpu: str | None = "1") -> dict[str, Any]:
    """Run one load in its own process (pinned to `cpu`); its result as a dict."""
    command = [sys.executable, "-m", "bench.loadgen"]
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    bound = float(spec.get("seconds", 60)) + float(spec.get("timeout", 30)) + 30
    done = subprocess.run(
        command, input=json.dumps(spec), capture_output=True, text=True, timeout=bound, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p90/p99 in milliseconds (None when nothing was measured)."""
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p90": None, "p99": None}

    def at(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    return {"p50": at(50), "p90": at(90), "p99": at(99)}


class Tally:
    """Latencies, statuses, failures and a per-second timeline of one load."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.timeline: list[Counter[str]] = []
        self.started = time.perf_counter()

    def count(self, outcome: str, latency: float | None = None) -> None:
        self.statuses[outcome] += 1
        second = int(time.perf_counter() - self.started)
        while len(self.timeline) <= second:
            self.timeline.append(Counter())
        self.timeline[second][outcome] += 1
        if latency is not None and outcome == "200":
            self.latencies.append(latency)

    def result(self, seconds: float, **extra: Any) -> dict[str, Any]:
        done = sum(n for outcome, n in self.statuses.items() if outcome != "dropped")
        return {
            "requests": done,
            "seconds": seconds,
            "rate": done / seconds if seconds else 0.0,
            "ok": self.statuses["200"],
            "errors": done - self.statuses["200"],
            "statuses": dict(self.statuses),
            "timeline": [dict(c) for c in self.timeline],
            **percentiles(self.latencies),
            **extra,
        }


async def send(
    session: aiohttp.ClientSession, spec: dict[str, Any], body: str, tally: Tally, start: float
) -> None:
    try:
        async with session.post(spec["url"], data=body) as answer:
            await answer.read()
            tally.count(str(answer.status), time.perf_counter() - start)
    except (aiohttp.ClientError, TimeoutError) as e:
        tally.count(type(e).__name__)


async def closed(session: aiohttp.ClientSession, spec: dict[str, Any]) -> dict[str, Any]:
    tally = Tally()
    bodies: list[str] = spec["bodies"]
    deadline = time.perf_counter() + float(spec.get("seconds", 60))
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < spec["requests"] and time.perf_counter() < deadline:
            body = bodies[sent % len(bodies)]
            sent += 1
            await send(session, spec, body, tally, time.perf_counter())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    return tally.result(time.perf_counter() - started)


async def open_loop(session: aiohttp.ClientSession, spec: dict[str, Any]) -> dict[str, Any]:
    tally = Tally()
    bodies: list[str] = spec["bodies"]
    rate, seconds = float(spec["rate"]), float(spec["seconds"])
    limit = int(spec.get("max_outstanding", 1000))
    outstanding: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    for n in range(int(rate * seconds)):
        scheduled = started + n / rate
        pause = scheduled - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        if len(outstanding) >= limit:
            tally.count("dropped")
            continue
        task = asyncio.create_task(send(session, spec, bodies[n % len(bodies)], tally, scheduled))
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
    await asyncio.gather(*outstanding)
    return tally.result(time.perf_counter() - started, offered=rate)


async def streamed(session: aiohttp.ClientSession, spec: dict[str, Any]) -> dict[str, Any]:
    """Closed-loop streams: time to the first `data:` event, and the gaps between the rest."""
    tally = Tally()
    firsts: list[float] = []
    gaps: list[float] = []
    chunks: list[int] = []
    deadline = time.perf_counter() + float(spec.get("seconds", 60))
    sent = 0

    async def one(body: str) -> None:
        start = time.perf_counter()
        events: list[float] = []
        try:
            async with session.post(spec["url"], data=body) as answer:
                async for line in answer.content:
                    if line.startswith(b"data:"):
                        events.append(time.perf_counter())
                tally.count(str(answer.status), time.perf_counter() - start)
        except (aiohttp.ClientError, TimeoutError) as e:
            tally.count(type(e).__name__)
            return
        if len(events) > 1:
            firsts.append(events[0] - start)
            gaps.append((events[-1] - events[0]) / (len(events) - 1))
            chunks.append(len(events))

    async def worker() -> None:
        nonlocal sent
        while sent < spec["requests"] and time.perf_counter() < deadline:
            sent += 1
            await one(spec["bodies"][sent % len(spec["bodies"])])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    first, gap = percentiles(firsts), percentiles(gaps)
    return tally.result(
        time.perf_counter() - started,
        ttft_p50=first["p50"],
        ttft_p99=first["p99"],
        gap_p50=gap["p50"],
        gap_p99=gap["p99"],
        chunks=sum(chunks) / len(chunks) if chunks else 0,
    )


SHAPES = {"closed": closed, "open": open_loop, "stream": streamed}


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    limit = max(int(spec.get("concurrency", 0)), int(spec.get("max_outstanding", 0)), 1)
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout", 30)))
    headers = {**HEADERS, **spec.get("headers", {})}
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:
        return await SHAPES[spec["mode"]](session, spec)


if __name__ == "__main__":
    import uvloop

    print(json.dumps(uvloop.run(main(json.load(sys.stdin)))))
