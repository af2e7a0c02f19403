"""Test MCP servers as subprocesses on free loopback ports, and reading their call counts.

:class:`ServerProcess` runs one ``python -m tests.support.mcp KIND`` (or any command) and
waits until it answers; :class:`McpServer` is what tests hold: its ``url``, its call counts
(``calls()``, ``count("tools/list")``), its controls, and ``stop()``. The bridge to
mcp-server-time counts through a file written by :mod:`.relay` instead of ``/control``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

from tests.support.proxy import free_port

REPO = pathlib.Path(__file__).resolve().parents[3]
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


class ServerProcess:
    """One server subprocess, its output in a log file; started and stopped by the caller."""

    def __init__(self, command: list[str], port: int, workdir: pathlib.Path, name: str) -> None:
        self.command = command
        self.port = port
        self.log_path = workdir / f"{name}-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_path: str) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.answers(ready_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.command[:4]} did not start:\n{self.log()}")
            time.sleep(0.05)

    def answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.base + path, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class McpServer:
    """A running test MCP server: where it is, what reached it, and its controls."""

    def __init__(
        self, kind: str, args: list[str], workdir: pathlib.Path, path: str = "/mcp"
    ) -> None:
        self.kind = kind
        self.path = path
        port = free_port()
        command = [sys.executable, "-m", "tests.support.mcp", kind, "--port", str(port), *args]
        self.process = ServerProcess(command, port, workdir, kind)

    def start(self) -> McpServer:
        self.process.start("/control/calls")
        return self

    @property
    def url(self) -> str:
        return self.process.base + self.path

    def url_for(self, path: str) -> str:
        """Another MCP endpoint of the same process (the hostile server's modes)."""
        return self.process.base + path

    def control(self, name: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else b""
        method = "GET" if name == "calls" else "POST"
        request = urllib.request.Request(
            self.process.base + f"/control/{name}", data=data or None, method=method
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def calls(self) -> dict[str, int]:
        result: dict[str, int] = self.control("calls")
        return result

    def count(self, method: str) -> int:
        return self.calls().get(method, 0)

    def reset(self) -> None:
        self.control("reset")

    def stop(self) -> None:
        self.process.stop()

    def log(self) -> str:
        return self.process.log()

    def __repr__(self) -> str:
        running = self.process.process is not None and self.process.process.poll() is None
        return f"<McpServer {self.kind} {self.url} {'running' if running else 'stopped'}>"


class BridgedServer:
    """mcp-server-time behind mcp-proxy; counts come from the relay's log of methods."""

    def __init__(
        self, command: list[str], port: int, calls_log: pathlib.Path, workdir: pathlib.Path
    ) -> None:
        self.calls_log = calls_log
        self.process = ServerProcess(command, port, workdir, "mcp-proxy")

    def start(self) -> BridgedServer:
        self.process.start("/status")
        return self

    @property
    def url(self) -> str:
        return self.process.base + "/mcp"

    def calls(self) -> dict[str, int]:
        if not self.calls_log.exists():
            return {}
        return dict(Counter(self.calls_log.read_text().split()))

    def count(self, method: str) -> int:
        return self.calls().get(method, 0)

    def reset(self) -> None:
        self.calls_log.write_text("")

    def stop(self) -> None:
        self.process.stop()

    def log(self) -> str:
        return self.process.log()

    def __repr__(self) -> str:
        return f"<BridgedServer mcp-server-time via mcp-proxy {self.url}>"
