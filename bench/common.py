"""Shared bench plumbing: processes (simulator, proxy), CPU accounting, a load loop, percentiles.

Every bench reports ratios against a baseline run in the same script on the same machine, so
numbers from a busy or a quiet machine still compare.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_http(url: str, timeout: float = 20) -> None:
    """Return once `url` answers at all (an error status counts: the server is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError as e:
            e.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def spawn(
    command: list[str],
    ready_url: str,
    cpu: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 20,
) -> subprocess.Popen[bytes]:
    """Start a process (pinned to `cpu` cores when given) and wait until `ready_url` answers.

    Its stderr goes to a file, not a pipe: a chatty peer would block on a full pipe nobody reads.
    """
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    environ = {**os.environ, **(env or {})}
    with tempfile.TemporaryFile() as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=environ
        )
        try:
            wait_http(ready_url, timeout)
        except RuntimeError:
            process.kill()
            process.wait()
            log.seek(0)
            raise RuntimeError(log.read().decode(errors="replace")[-2000:]) from None
        except BaseException:  # Ctrl-C while waiting: nobody else holds the process to stop it
            process.kill()
            process.wait()
            raise
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a peer may run workers in child processes)."""
    found = [pid]
    for parent in found:
        with contextlib.suppress(OSError):
            children = pathlib.Path(f"/proc/{parent}/task/{parent}/children").read_text()
            found += [int(child) for child in children.split()]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants."""
    total = 0.0
    for member in tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(member)
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants."""
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError):
            for line in pathlib.Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@contextlib.contextmanager
def simulator(*args: str, cpu: str | None = None) -> Iterator[str]:
    """The upstream simulator in its own process; yields its `/v1` base URL."""
    port = free_port()
    command = [sys.executable, "-m", "tests.support.simulator", "--port", str(port), *args]
    process = spawn(command, f"http://127.0.0.1:{port}/_sim/health", cpu)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(process)


def configure_simulator(sim: str, **settings: Any) -> None:
    """Change the simulator's knobs (it keeps one set for everybody) and zero its counts."""
    root = sim.removesuffix("/v1")
    if settings:
        _post(root + "/_sim/configure", settings)
    _post(root + "/_sim/reset", {"keep_config": True})


def simulator_calls(sim: str, endpoint: str) -> int:
    """Calls the simulator has had on `endpoint` since its counts were zeroed."""
    with urllib.request.urlopen(sim.removesuffix("/v1") + "/_sim/stats?calls=0", timeout=5) as a:
        return int(json.load(a)["calls_by_endpoint"].get(endpoint, 0))


def _post(url: str, payload: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


@dataclass
class Proxy:
    url: str
    pid: int


@contextlib.contextmanager
def sluice(
    config: dict[str, Any], env: dict[str, str] | None = None, cpu: str | None = None
) -> Iterator[Proxy]:
    """`sluice proxy` in its own process; yields its `/v1` base URL and pid."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    command = [
        sys.executable,
        "-m",
        "sluice",
        "proxy",
        "--config",
        f.name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    process = spawn(command, f"http://127.0.0.1:{port}/readyz", cpu, env)
    try:
        yield Proxy(f"http://127.0.0.1:{port}/v1", process.pid)
    finally:
        stop(process)
        os.unlink(f.name)


@dataclass
class Result:
    requests: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.latencies)

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        return self.percentile(99)


async def load(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    requests: int,
    headers: dict[str, str] | None = None,
) -> Result:
    """Send `requests` POSTs (cycling through `bodies`) from `concurrency` workers."""
    sent = 0
    latencies: list[float] = []
    errors = 0
    base_headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers={**base_headers, **(headers or {})}
    ) as session:

        async def worker() -> None:
            nonlocal sent, errors
            while sent < requests:
                body = bodies[sent % len(bodies)]
                sent += 1
                started = time.perf_counter()
                async with session.post(url, data=body) as answer:
                    await answer.read()
                    if answer.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Result(len(latencies), time.perf_counter() - started, latencies, errors)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
