"""A real Prometheus for integration tests: Debian's `prometheus` on a free loopback port, a
temporary TSDB, a one-second scrape interval; and `promtool`, for the chart's rules.

`PrometheusServer(workdir, targets).start()` writes a scrape config with one job per `Target`,
each with the labels a ServiceMonitor would add (`namespace`, `service`, `pod`), starts the
server and waits for it. `.query()` runs instant
queries through the HTTP API; `.wait_scraped()` waits until every target was scraped after a
moment, so the traffic before it is in the TSDB.

Where `prometheus` or `promtool` is missing the tests that need them are skipped (`binary`: failed
in CI).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from tests.support import processes
from tests.support.proxy import free_port

SCRAPE_INTERVAL = "1s"
START_TIMEOUT_SECONDS = 30.0
SCRAPE_TIMEOUT_SECONDS = 30.0


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool` (Debian package `prometheus`)."""
    return processes.binary(name, "prometheus")


@dataclasses.dataclass(frozen=True)
class Target:
    """One scrape job: a loopback address and the labels its series get."""

    job: str
    address: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


class QueryError(AssertionError):
    """Prometheus refused a query (a parse or evaluation error)."""


class PrometheusServer:
    """One `prometheus` process with its own TSDB under `workdir`."""

    def __init__(self, workdir: pathlib.Path, targets: Sequence[Target]) -> None:
        self.workdir = workdir
        self.targets = list(targets)
        self.port = free_port()
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        jobs = [
            {
                "job_name": target.job,
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": SCRAPE_INTERVAL,
                "static_configs": [{"targets": [target.address], "labels": dict(target.labels)}],
            }
            for target in self.targets
        ]
        return {"global": {"scrape_interval": SCRAPE_INTERVAL}, "scrape_configs": jobs}

    def start(self) -> PrometheusServer:
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        command = [
            binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        processes.wait_started(
            "prometheus",
            self.process,
            self.ready,
            self.log,
            timeout=START_TIMEOUT_SECONDS,
            interval=0.1,
        )
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """The `data` of one HTTP API answer; `QueryError` when it says `error`."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as e:
            with e:
                body = json.loads(e.read())
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query's series (a vector; a scalar becomes one unlabelled series)."""
        data = self.api("query", query=expression)
        if data["resultType"] == "vector":
            return list(data["result"])
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise QueryError(f"{expression}: a {data['resultType']}, not a vector")

    def value(self, expression: str) -> float:
        """The one value of a query that must return exactly one series."""
        found = self.query(expression)
        assert len(found) == 1, f"{expression}: {len(found)} series: {found}"
        return float(found[0]["value"][1])

    def scrapes_since(self, after: float) -> dict[str, int]:
        """By job: how many times its target was scraped after `after` (Unix seconds)."""
        data = self.api("query", query="up[5m]")
        return {
            series["metric"]["job"]: sum(float(at) > after for at, _ in series["values"])
            for series in data["result"]
        }

    def wait_scraped(self, after: float, times: int = 3) -> None:
        """Wait until every target was scraped `times` since `after` (time.time()): the first
        may have begun before it, and a rate needs two samples. (Prometheus starts scraping some
        seconds after it is ready, when its discovery first reports the targets.)"""
        deadline = time.monotonic() + SCRAPE_TIMEOUT_SECONDS
        while True:
            scrapes = self.scrapes_since(after)
            if len(scrapes) == len(self.targets) and min(scrapes.values()) >= times:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not scraped {times} times since {after}: {scrapes}")
            time.sleep(0.2)

    def stop(self) -> None:
        processes.stop(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __repr__(self) -> str:
        return f"<PrometheusServer {self.url} jobs={[t.job for t in self.targets]}>"
