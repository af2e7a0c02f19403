"""Running `sluice proxy` as a real subprocess for integration tests, and reading its metrics.

A subprocess, not an in-process app: the tests then exercise the CLI, the config file, uvicorn,
signals and shutdown exactly as a user's pod does.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import processes

START_TIMEOUT_SECONDS = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyProcess:
    """One `sluice proxy --config FILE` process on a free loopback port."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: pathlib.Path,
        env: dict[str, str],
        args: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.args = args
        self.port = free_port()
        self.config_path = workdir / f"proxy-{self.port}.yaml"
        self.log_path = workdir / f"proxy-{self.port}.log"
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL to give a client."""
        return self.base + "/v1"

    def start(self) -> ProxyProcess:
        self.config_path.write_text(yaml.safe_dump(self.config))
        command = [
            sys.executable,
            "-m",
            "sluice",
            "proxy",
            "--config",
            str(self.config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *self.args,
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        raise RuntimeError(f"proxy not ready after {START_TIMEOUT_SECONDS}s:\n{self.log()}")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample from `/metrics`, keyed by (name, sorted labels)."""
        status, body = self.get("/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value, or 0 when it has not been exported yet."""
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        processes.stop(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ProxyFactory:
    """Starts proxies for one test and stops them all afterwards."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.started: list[ProxyProcess] = []

    def __call__(
        self, config: dict[str, Any], env: dict[str, str] | None = None, *args: str
    ) -> ProxyProcess:
        """A started proxy; `args` go on its command line after the defaults."""
        proxy = ProxyProcess(config, self.workdir, env or {}, args)
        self.started.append(proxy)
        return proxy.start()

    def stop_all(self) -> None:
        for proxy in self.started:
            proxy.stop()


@pytest.fixture
def start_proxy(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> Iterator[ProxyFactory]:
    """`start_proxy(config_dict, env=None, *args) -> ProxyProcess`; logs are printed when a test
    fails."""
    factory = ProxyFactory(tmp_path)
    yield factory
    factory.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proxy in factory.started:
            print(f"--- proxy on port {proxy.port} ---\n{proxy.log()}")
