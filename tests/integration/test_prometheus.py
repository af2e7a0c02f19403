"""The proxy's and the operator's metrics through a real Prometheus, and the chart's dashboard
and alerts evaluated against them.

One scenario for the module (it is the slow part): a `sluice proxy` serving the LLM routes (over
the simulator, with a tiered cache on a real redis-server) and the MCP gateway (a real SDK
server, and one that is down), a `sluice operator` on the test control plane reconciling a
policy, and Prometheus scraping both every second with the labels a ServiceMonitor adds. Known
traffic goes through the official `openai` and `mcp` clients; then the tests read the results
through Prometheus' HTTP API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import mcp
import openai
import pytest
import yaml
from mcp.shared.exceptions import MCPError

from tests.support import controlplane as cp
from tests.support import operator as op
from tests.support import processes
from tests.support.controlplane import binaries
from tests.support.prometheus import PrometheusServer, Target, binary
from tests.support.proxy import ProxyFactory, ProxyProcess, free_port
from tests.support.redis import RedisServer
from tests.support.simulator import SimulatorThread
from tests.support.toolservers import ToolServer, wait_until_up

pytestmark = pytest.mark.integration

CHART = cp.REPO / "charts" / "sluice"
CRDS = cp.REPO / "crds"
DASHBOARD = CHART / "files" / "dashboards" / "sluice-proxies.json"
ALERT_TESTS = pathlib.Path(__file__).parent / "alerts_test.yaml"
PROXY_LABELS = {"namespace": "team-a", "service": "chat-llm", "pod": "chat-llm-0"}
OPERATOR_LABELS = {"namespace": "sluice-system", "service": "sluice", "pod": "sluice-0"}
EMBEDDING_CALLERS = 8
MAX_CONNECTIONS = 7
# What the dashboard's variables stand for in the test: every namespace and proxy ("All"), and a
# rate window that holds the whole scenario, however slowly the tests after it run.
VARIABLES = {
    "$namespace": ".*",
    "$service": ".*",
    "$__rate_interval": "10m",
    "$__range": "10m",
}


@dataclasses.dataclass
class Traffic:
    """What the scenario sent, and what came back, for the tests to compare with Prometheus."""

    chat_requests: int = 0
    chat_hits: int = 0
    prompt_tokens_billed: int = 0
    prompt_tokens_hit: int = 0
    completion_tokens_hit: int = 0
    embedding_calls: int = 0
    request_ids: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Scenario:
    prometheus: PrometheusServer
    proxy: ProxyProcess
    traffic: Traffic


def start_tool_servers(*names: str) -> tuple[subprocess.Popen[bytes], list[ToolServer]]:
    servers = [ToolServer(name, free_port()) for name in names]
    command = [sys.executable, "-m", "tests.support.toolservers"]
    process = subprocess.Popen([*command, *(f"{s.name}:{s.port}" for s in servers)])
    for server in servers:
        wait_until_up(server)
    return process, servers


def proxy_config(simulator: str, alpha: ToolServer) -> dict[str, Any]:
    return {
        "llm": {
            "upstream": {"url": simulator, "retry": {"backoffSeconds": 0.01}},
            "pool": {"clients": 1, "maxConnections": MAX_CONNECTIONS},
            "batching": {"maxWaitMilliseconds": 50},
            # Few entries: the memory tier evicts; Redis behind it times its round trips.
            "cache": {"backend": "tiered", "maxEntries": 3, "redis": {"urlEnv": "REDIS_URL"}},
            # Deferred jobs sent and polled at once; a whole batch is assumed to take 10 minutes,
            # so a request with a nearer deadline falls back to a synchronous call.
            "deferred": {
                "flushAfterSeconds": 0.1,
                "pollIntervalSeconds": 0.1,
                "maxPollIntervalSeconds": 0.2,
                "assumedBatchLatencySeconds": 600,
                "prices": {"gpt-4o-mini": {"inputPerMillion": 0.15, "outputPerMillion": 0.6}},
            },
        },
        "mcp": {
            "servers": [
                {"name": "alpha", "url": alpha.url},
                {
                    "name": "ghost",
                    "url": f"http://127.0.0.1:{free_port()}/mcp",
                    "timeoutSeconds": 2,
                },
            ],
            "toolResults": [{"tool": "alpha.add", "ttlSeconds": 300}],
        },
        "admin": {"port": free_port()},
    }


def chat(client: openai.OpenAI, traffic: Traffic, text: str, **options: Any) -> int:
    """One chat request through the proxy; returns its status, counting what it implies."""
    traffic.chat_requests += 1
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **options
        )
    except openai.APIStatusError as e:
        traffic.request_ids.append(e.response.headers["x-request-id"])
        return e.status_code
    traffic.request_ids.append(raw.headers["x-request-id"])
    usage = raw.parse().usage
    assert usage is not None
    if raw.headers.get("x-sluice-cache") == "hit":
        traffic.chat_hits += 1
        traffic.prompt_tokens_hit += usage.prompt_tokens
        traffic.completion_tokens_hit += usage.completion_tokens
    elif raw.headers.get("x-sluice-deferred") != "batch":  # a job's tokens are counted apart
        traffic.prompt_tokens_billed += usage.prompt_tokens
    return raw.status_code


async def embed_concurrently(proxy: ProxyProcess) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="sk-test", max_retries=0) as c:
        await asyncio.gather(
            *(
                c.embeddings.create(model="text-embedding-3-small", input=f"input {i}")
                for i in range(EMBEDDING_CALLERS)
            )
        )


async def use_tools(proxy: ProxyProcess, alpha: ToolServer) -> None:
    async with mcp.Client(f"{proxy.base}/mcp") as client:
        await client.list_tools()
        await client.list_tools()  # from the list cache
        for _ in range(3):  # one call, then two from the result cache
            await client.call_tool("alpha.add", {"a": 1, "b": 2})
        await client.call_tool("alpha.fails", {})  # the tool's own error (isError)
        alpha.control("mode", {"fail": True})
        try:
            with pytest.raises(MCPError):
                await client.call_tool("alpha.whoami", {})
        finally:
            alpha.control("mode", {"fail": False})


def send_traffic(
    proxy: ProxyProcess, simulator: SimulatorThread, redis: RedisServer, alpha: ToolServer
) -> Traffic:
    traffic = Traffic()
    client = openai.OpenAI(base_url=proxy.url, api_key="sk-test", max_retries=0)
    with client:
        for _ in range(3):  # a miss, then two hits
            assert chat(client, traffic, "cached question", temperature=0) == 200
        simulator.sim.fail_next(503, endpoint="chat")  # retried by the proxy, then answered
        assert chat(client, traffic, "retried question", temperature=0.7) == 200
        simulator.sim.fail_next(500, endpoint="chat")  # not retried: a POST may have billed
        assert chat(client, traffic, "failing question", temperature=0.7) == 500
        deferred = {"temperature": 0.5}
        for deadline in ("2h", "90s"):  # through a Batch API job; a synchronous fallback
            headers = {"x-sluice-deferred": deadline}
            assert chat(client, traffic, f"deferred {deadline}", extra_headers=headers, **deferred)
        asyncio.run(embed_concurrently(proxy))
        traffic.embedding_calls = len(simulator.sim.calls_for("embeddings"))
        asyncio.run(use_tools(proxy, alpha))
        redis.kill()  # the cache is bypassed, and its errors counted
        assert chat(client, traffic, "question while Redis is down", temperature=0) == 200
    return traffic


@pytest.fixture(scope="module")
def scenario(
    tmp_path_factory: pytest.TempPathFactory,
    simulator_thread: SimulatorThread,
    controlplane: cp.ControlPlane,
) -> Iterator[Scenario]:
    binary("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    simulator_thread.sim.reset()
    redis = RedisServer(
        processes.binary("redis-server", "redis-server"), workdir, free_port()
    ).start()
    tools, (alpha,) = start_tool_servers("alpha")
    proxies = ProxyFactory(workdir)
    controlplane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    names = ["crd/llmbatchpolicies.sluice.dev", "crd/toolcachepolicies.sluice.dev"]
    controlplane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    namespace = f"obs-{int(time.time()) % 100000}"
    controlplane.kubectl("create", "namespace", namespace)
    operator = op.OperatorProcess(controlplane, workdir).start()
    prometheus: PrometheusServer | None = None
    try:
        config = proxy_config(simulator_thread.url, alpha)
        proxy = proxies(config, {"REDIS_URL": redis.url})
        prometheus = PrometheusServer(workdir, [
            Target("sluice-proxy", f"127.0.0.1:{proxy.port}", PROXY_LABELS),
            Target("sluice-operator", f"127.0.0.1:{operator.metrics_port}", OPERATOR_LABELS),
        ]).start()  # fmt: skip
        op.apply(controlplane, namespace, op.EXAMPLES / "llm-policy.yaml")
        op.wait_for("a reconcile", lambda: 'result="applied"' in operator.metrics())
        traffic = send_traffic(proxy, simulator_thread, redis, alpha)
        prometheus.wait_scraped(time.time())
        yield Scenario(prometheus, proxy, traffic)
    finally:
        if prometheus is not None:
            prometheus.stop()
        operator.stop()
        controlplane.kubectl("delete", "namespace", namespace, "--wait=false")
        proxies.stop_all()
        tools.terminate()
        tools.wait(10)
        redis.stop()
        simulator_thread.sim.reset()


# --- item 1: the series have the values the traffic implies ----------------------------------


def test_prometheus_scrapes_the_proxy_and_the_operator(scenario: Scenario) -> None:
    up = scenario.prometheus.query("up")
    assert {s["metric"]["job"]: s["value"][1] for s in up} == {
        "sluice-proxy": "1",
        "sluice-operator": "1",
    }


def test_request_token_and_cache_series_match_the_traffic(scenario: Scenario) -> None:
    p, traffic = scenario.prometheus, scenario.traffic
    route = 'route="chat_completions"'
    assert p.value(f"sum(sluice_http_requests_total{{{route}}})") == traffic.chat_requests
    assert p.value(f'sum(sluice_http_requests_total{{{route}, status="500"}})') == 1
    assert p.value('sum(sluice_cache_requests_total{cache="chat", result="hit"})') == 2
    assert traffic.chat_hits == 2
    billed = 'sluice_llm_tokens_total{endpoint="chat_completions", type="prompt"}'
    assert p.value(billed) == traffic.prompt_tokens_billed
    saved = 'sluice_llm_tokens_saved_total{endpoint="chat_completions", type="%s"}'
    assert p.value(saved % "prompt") == traffic.prompt_tokens_hit > 0
    assert p.value(saved % "completion") == traffic.completion_tokens_hit > 0
    cached = 'sluice_upstream_calls_saved_total{endpoint="chat_completions", reason="cached"}'
    assert p.value(cached) == 2
    assert p.value('sum(sluice_llm_retries_total{endpoint="chat_completions"})') == 1
    assert p.value('sum(sluice_cache_backend_errors_total{backend="redis"})') >= 1
    assert p.value("sum(sluice_cache_evictions_total)") >= 1


def test_batch_series_match_the_coalesced_embeddings(scenario: Scenario) -> None:
    p, calls = scenario.prometheus, scenario.traffic.embedding_calls
    assert 1 <= calls < EMBEDDING_CALLERS
    assert p.value('sluice_batch_size_count{endpoint="embeddings"}') == calls
    assert p.value('sluice_batch_size_sum{endpoint="embeddings"}') == EMBEDDING_CALLERS
    saved = 'sluice_upstream_calls_saved_total{endpoint="embeddings", reason="batched"}'
    assert p.value(saved) == EMBEDDING_CALLERS - calls


def test_pool_series_show_the_configured_limit_and_the_open_connections(
    scenario: Scenario,
) -> None:
    p = scenario.prometheus
    assert p.value('sluice_pool_connection_limit{pool="llm"}') == MAX_CONNECTIONS
    assert p.value('sum(sluice_pool_connections{pool="llm"})') >= 1
    assert p.value('sum(sluice_pool_waiting_requests{pool="llm"})') == 0


def test_mcp_series_match_the_tool_calls(scenario: Scenario) -> None:
    p = scenario.prometheus
    calls = 'sluice_tool_calls_total{server="alpha", tool="%s", outcome="%s"}'
    assert p.value(calls % ("add", "ok")) == 1
    assert p.value(calls % ("add", "cached")) == 2
    assert p.value(calls % ("fails", "error")) == 1
    assert p.value(calls % ("whoami", "failed")) == 1
    # alpha's last answer was the failure: down until it answers again; ghost never answered.
    assert p.value('sluice_mcp_upstream_up{server="alpha"}') == 0
    assert p.value('sluice_mcp_tools{server="alpha"}') >= 4
    assert p.value('sluice_mcp_upstream_up{server="ghost"}') == 0


@pytest.mark.parametrize(
    ("histogram", "selector"),
    [
        pytest.param("sluice_http_request_duration_seconds", 'route="chat_completions"', id="http"),
        pytest.param("sluice_llm_request_duration_seconds", 'endpoint="chat_completions"',
                     id="llm"),
        pytest.param("sluice_tool_call_duration_seconds", 'server="alpha"', id="tool-calls"),
        pytest.param("sluice_redis_operation_duration_seconds", 'operation="get"', id="redis"),
    ],
)  # fmt: skip
def test_histograms_give_sane_quantiles(scenario: Scenario, histogram: str, selector: str) -> None:
    """Over the whole run (the buckets as they stand), as a rate would over a window."""
    p = scenario.prometheus
    buckets = f"sum by (le) ({histogram}_bucket{{{selector}}})"
    p50 = p.value(f"histogram_quantile(0.5, {buckets})")
    p99 = p.value(f"histogram_quantile(0.99, {buckets})")
    mean = p.value(f"sum({histogram}_sum{{{selector}}}) / sum({histogram}_count{{{selector}}})")
    assert 0 < p50 <= p99 < 30
    assert 0 < mean < 30


def test_every_answer_had_its_own_request_id(scenario: Scenario) -> None:
    ids = scenario.traffic.request_ids
    assert len(ids) == len(set(ids)) == scenario.traffic.chat_requests


# --- item 2: every dashboard query and every alert expression returns series -----------------


def textboxes() -> dict[str, str]:
    """The dashboard's own inputs (prices), at their defaults."""
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    return {f"${v['name']}": v["query"] for v in variables if v["type"] == "textbox"}


def substituted(expression: str) -> str:
    for variable, value in {**VARIABLES, **textboxes()}.items():
        expression = expression.replace(variable, value)
    assert "$" not in expression, f"a dashboard variable the test does not know: {expression}"
    return expression


def panel_queries() -> list[Any]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        pytest.param(target["expr"], id=f"{panel['title']}/{target['refId']}")
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


@pytest.mark.parametrize("expression", panel_queries())
def test_each_dashboard_query_returns_series_after_the_traffic(
    scenario: Scenario, expression: str
) -> None:
    found = scenario.prometheus.query(substituted(expression))
    assert found, f"no series: {substituted(expression)}"


def render_rules(tmp_path: pathlib.Path) -> pathlib.Path:
    """The chart's PrometheusRule as `helm template` renders it, as a plain rules file."""
    helm = binaries.default_bin_dir() / "helm"
    if not helm.exists():
        pytest.skip(f"{helm} is missing: hack/controlplane/build.sh builds it")
    rendered = subprocess.run(
        [str(helm), "template", "sluice", str(CHART), "--set=prometheus.rules.enabled=true",
         "--show-only=templates/proxies-prometheusrule.yaml"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(rendered)["spec"]))
    return path


def alerts() -> list[Any]:
    template = (CHART / "templates/proxies-prometheusrule.yaml").read_text()
    return [pytest.param(name, id=name) for name in re.findall(r"- alert: (\S+)", template)]


def sides(expression: str) -> tuple[str, str] | None:
    """The two sides of the expression's last comparison outside brackets, if it has one."""
    depth, found = 0, None
    for i, char in enumerate(expression):
        depth += char in "([{"
        depth -= char in ")]}"
        if depth == 0 and char in "<>" and expression[i - 1] not in "=!":
            found = i
    if found is None:
        return None
    right = expression[found + 1 :].lstrip("=")
    return expression[:found], right


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    path = render_rules(tmp_path_factory.mktemp("rules"))
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


@pytest.mark.parametrize("alert", alerts())
def test_each_alert_expression_evaluates_and_its_measured_side_returns_series(
    scenario: Scenario, rules: dict[str, str], alert: str
) -> None:
    """The whole expression must evaluate; what it compares must exist. Its threshold side is
    a number, or yesterday's ratio (`offset 1d`), which a Prometheus started a minute ago
    lacks: that side is evaluated without its offset."""
    p = scenario.prometheus
    expression = rules[alert]
    p.query(expression)  # a QueryError fails the test
    split = sides(expression)
    assert split is not None, f"{alert} compares nothing"
    measured, threshold = split
    assert p.query(measured), f"{alert}: no series: {measured}"
    if "sluice_" in threshold:
        assert p.query(threshold.replace(" offset 1d", "")), f"{alert}: no series: {threshold}"


def test_promtool_accepts_the_rendered_rules(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [binary("promtool"), "check", "rules", str(render_rules(tmp_path))],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fire_each_alert_after_its_for_and_not_before(
    tmp_path: pathlib.Path,
) -> None:
    render_rules(tmp_path)
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text(ALERT_TESTS.read_text())
    covered = {
        case["alertname"]
        for group in yaml.safe_load(tests.read_text())["tests"]
        for case in group["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert covered == {param.values[0] for param in alerts()}
    result = subprocess.run(
        [binary("promtool"), "test", "rules", str(tests)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
