"""The operator against a real API server: examples in, Ready proxies out, drift undone.

One `sluice operator` subprocess (tests/support/operator.py) serves the whole module, signed in
as the control plane's admin; test_chart.py runs one with exactly the chart's RBAC. kwok marks
the proxy pods Ready, so Deployments become Available without a kubelet; the last test runs
the ConfigMap the operator rendered through a real `sluice proxy` on loopback instead. For the
status the operator reads from pods' own `/metrics`, a test moves kwok's pods onto loopback
addresses (their `status.podIP`), where it serves their pages itself.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import pathlib
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import mcp
import openai
import pytest
import yaml

from sluice.api import policies
from sluice.operator import podmetrics, proxyconfig, resources
from tests.support import controlplane as cp
from tests.support import operator as op
from tests.support.mcp import McpServer
from tests.support.proxy import ProxyFactory, free_port
from tests.support.simulator import Simulator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def crds(controlplane: cp.ControlPlane) -> cp.ControlPlane:
    """The generated CRDs, installed as `kubectl apply` would install them from crds/."""
    controlplane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(cp.REPO / "crds"))
    names = ["crd/llmbatchpolicies.sluice.dev", "crd/toolcachepolicies.sluice.dev"]
    controlplane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return controlplane


@pytest.fixture(scope="module")
def operator(
    crds: cp.ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[op.OperatorProcess]:
    process = op.OperatorProcess(crds, tmp_path_factory.mktemp("operator")).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture
def namespace(crds: cp.ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test; the operator's log is printed when the test fails."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    crds.kubectl("create", "namespace", name)
    yield name
    crds.kubectl("delete", "namespace", name, "--wait=false")
    report = getattr(request.node, "rep_call", None)
    process = request.node.funcargs.get("operator")
    if report is not None and report.failed and process is not None:
        print(f"--- operator log ---\n{process.log()[-20000:]}")


def checksum(deployment: dict[str, Any] | None) -> str | None:
    annotations = (deployment or {})["spec"]["template"]["metadata"]["annotations"]
    value: str | None = annotations.get(resources.CHECKSUM_ANNOTATION)
    return value


def secret_values(path: pathlib.Path) -> list[str]:
    return [
        value
        for doc in op.documents(path)
        if doc["kind"] == "Secret"
        for value in doc.get("stringData", {}).values()
    ]


@pytest.mark.parametrize("example", sorted(op.EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_each_example_becomes_ready_with_its_proxy_objects(
    operator: op.OperatorProcess, namespace: str, example: pathlib.Path
) -> None:
    plane = operator.plane
    op.apply(plane, namespace, example)

    docs = [d for d in op.documents(example) if d["kind"] in op.SHORT]
    assert docs
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        policy = op.ready_policy(plane, namespace, op.SHORT[kind], name)
        child = resources.child_name(kind, name)
        path = policies.KINDS[kind].endpoint_path
        assert policy["status"]["endpoint"] == f"http://{child}.{namespace}.svc:8080{path}"
        assert policy["metadata"].get("finalizers") is None  # deletion never waits on us
        deployment = op.get(plane, namespace, f"deployment/{child}")
        assert op.condition(deployment, "Available")["status"] == "True"
        assert op.get(plane, namespace, f"service/{child}") is not None
        budget = op.get(plane, namespace, f"poddisruptionbudget/{child}")
        assert (budget is not None) == (policy["spec"]["proxy"]["replicas"] > 1)
        config_map = op.config_map(plane, namespace, child)
        assert config_map is not None
        assert config_map["immutable"] is True
        rendered = json.dumps([config_map, deployment])
        assert not any(value in rendered for value in secret_values(example))
        admin = op.get(plane, namespace, f"secret/{child}-admin")  # the admin API's token
        assert admin is not None
        assert admin["metadata"]["ownerReferences"][0]["uid"] == policy["metadata"]["uid"]
        assert op.container_env(plane, namespace, child)["SLUICE_ADMIN_TOKEN"]


def test_a_spec_change_rolls_the_pods_onto_the_new_config(
    operator: op.OperatorProcess, namespace: str
) -> None:
    plane = operator.plane
    op.apply(plane, namespace, op.EXAMPLES / "llm-policy.yaml")
    op.ready_policy(plane, namespace, "lbp", "openai")
    before = checksum(op.get(plane, namespace, "deployment/openai-llm"))

    patch = {"spec": {"batching": {"maxBatchSize": 64}}}
    plane.kubectl("-n", namespace, "patch", "lbp/openai", "--type=merge", "-p", json.dumps(patch))

    policy = op.ready_policy(plane, namespace, "lbp", "openai")
    assert policy["status"]["observedGeneration"] == 2
    after = checksum(op.get(plane, namespace, "deployment/openai-llm"))
    assert after not in (None, before)
    config_map = op.config_map(plane, namespace, "openai-llm")
    assert config_map is not None
    assert yaml.safe_load(config_map["data"]["proxy.yaml"])["llm"]["batching"]["maxBatchSize"] == 64

    def rolled() -> bool:
        selector = resources.label_selector("LLMBatchPolicy", "openai")
        pods = json.loads(
            plane.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json").stdout
        )["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        sums = {p["metadata"]["annotations"][resources.CHECKSUM_ANNOTATION] for p in live}
        return len(live) == 2 and sums == {after}

    op.wait_for("every pod on the new config", rolled)
    op.wait_for(
        "Progressing=False, RolloutComplete",
        lambda: (
            op.condition(op.get(plane, namespace, "lbp/openai"), "Progressing").get("reason")
            == "RolloutComplete"
        ),
    )
    selector = resources.label_selector("LLMBatchPolicy", "openai")

    def configs() -> list[str]:
        found = plane.kubectl("-n", namespace, "get", "configmaps", "-l", selector, "-o", "name")
        return found.stdout.split()

    op.wait_for(
        "the old config pruned",
        lambda: configs() == [f"configmap/{config_map['metadata']['name']}"],
    )


def test_deleting_a_policy_garbage_collects_everything_it_made(
    operator: op.OperatorProcess, namespace: str
) -> None:
    plane = operator.plane
    op.apply(plane, namespace, op.EXAMPLES / "llm-policy.yaml")
    op.ready_policy(plane, namespace, "lbp", "openai")

    plane.kubectl("-n", namespace, "delete", "lbp/openai", "--timeout=30s")

    kinds = ["deployment", "service", "poddisruptionbudget", "secret"]
    selector = resources.label_selector("LLMBatchPolicy", "openai")
    op.wait_for(
        "children collected",
        lambda: (
            all(op.get(plane, namespace, f"{k}/openai-llm") is None for k in kinds[:3])
            and op.get(plane, namespace, "secret/openai-llm-admin") is None
            and not plane.kubectl(
                "-n", namespace, "get", "configmaps", "-l", selector, "-o", "name"
            ).stdout.strip()
        ),
    )


def test_a_hand_edit_of_an_owned_object_is_reverted(
    operator: op.OperatorProcess, namespace: str
) -> None:
    plane = operator.plane
    op.apply(plane, namespace, op.EXAMPLES / "llm-policy.yaml")
    op.ready_policy(plane, namespace, "lbp", "openai")
    config_before = op.config_map(plane, namespace, "openai-llm")
    assert config_before is not None

    plane.kubectl("-n", namespace, "scale", "deployment/openai-llm", "--replicas=5")
    plane.kubectl(
        "-n", namespace, "set", "image", "deployment/openai-llm", "proxy=evil.invalid/x:1"
    )
    plane.kubectl("-n", namespace, "delete", f"configmap/{config_before['metadata']['name']}")

    def deployment_restored() -> bool:
        spec = (op.get(plane, namespace, "deployment/openai-llm") or {}).get("spec", {})
        image = spec["template"]["spec"]["containers"][0]["image"]
        return spec.get("replicas") == 2 and image == op.PROXY_IMAGE

    op.wait_for("Deployment restored", deployment_restored)
    restored = op.wait_for(
        "ConfigMap recreated",
        lambda: op.get(plane, namespace, f"configmap/{config_before['metadata']['name']}"),
    )
    assert restored["data"] == config_before["data"]
    op.ready_policy(plane, namespace, "lbp", "openai")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        pytest.param({"batching": {"maxBatchSize": 0}}, "spec.batching.maxBatchSize", id="batch-0"),
        pytest.param(
            {"cache": {"ttlSeconds": {"chat": -1}}}, "spec.cache.ttlSeconds.chat", id="negative-ttl"
        ),
        pytest.param({"cache": {"backend": "disk"}}, "spec.cache.backend", id="unknown-backend"),
        pytest.param(
            {"cache": {"backend": "redis"}}, "spec.cache.redis.urlSecretRef", id="redis-without-url"
        ),
        pytest.param(
            {"pool": {"maxConnections": 5, "maxKeepaliveConnections": 6}},
            "spec.pool.maxKeepaliveConnections",
            id="keepalive-over-max",
        ),
        pytest.param(
            {"upstream": {"url": "http://a/v1", "endpoints": ["http://b/v1"]}},
            "spec.upstream.endpoints",
            id="url-and-endpoints",
        ),
        pytest.param(
            {"proxy": {"resources": {"limits": {"cpu": "lots"}}}},
            "spec.proxy.resources.limits.cpu",
            id="bad-quantity",
        ),
        pytest.param(
            {"batching": {"maxBatchSizes": 3}}, "spec.batching.maxBatchSizes", id="unknown-field"
        ),
        pytest.param(
            {"proxy": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}},
            "spec.proxy.resources.requests: Invalid value",
            id="request-over-limit",
        ),
        pytest.param(
            {"proxy": {"resources": {"requests": {"memory": "-1Gi"}}}},
            "spec.proxy.resources.requests.memory",
            id="negative-quantity",
        ),
        pytest.param(
            {"proxy": {"resources": {"limits": {"cpu": -2}}}},
            "spec.proxy.resources.limits.cpu",
            id="negative-integer",
        ),
        pytest.param(
            {"proxy": {"resources": {"limits": {"gpu": 1}}}},
            "spec.proxy.resources.limits: Invalid value",
            id="unknown-resource",
        ),
        pytest.param({"upstream": {"url": "https://"}}, "spec.upstream.url", id="url-no-host"),
        pytest.param(
            {"upstream": {"url": "https://api openai.com/v1"}}, "spec.upstream.url", id="url-space"
        ),
        pytest.param(
            {"upstream": {"endpoints": ["http://a/v1", "https:// b"]}},
            "spec.upstream.endpoints[1]",
            id="endpoint-space",
        ),
        pytest.param(
            {"proxy": {"autoscaling": {"minReplicas": 4, "maxReplicas": 2}}},
            "spec.proxy.autoscaling.minReplicas",
            id="autoscaling-min-over-max",
        ),
        pytest.param(
            {"upstream": {"apiKeySecretRef": {"name": "../../kube-system/secrets/x", "key": "k"}}},
            "spec.upstream.apiKeySecretRef.name",
            id="secret-name-out-of-the-namespace",
        ),
    ],
)
def test_invalid_specs_are_rejected_by_the_api_server_naming_the_field(
    crds: cp.ControlPlane, spec: dict[str, Any], field: str
) -> None:
    manifest = yaml.safe_dump(op.llm_policy("bad", **spec))
    result = crds.kubectl("-n", "default", "apply", "-f", "-", input=manifest, check=False)

    assert result.returncode != 0
    assert field in result.stderr


def test_a_tool_cache_policy_with_two_servers_of_one_name_is_rejected(
    crds: cp.ControlPlane,
) -> None:
    servers = [{"name": "a", "url": "http://a/mcp"}, {"name": "a", "url": "http://b/mcp"}]
    manifest = {"apiVersion": "sluice.dev/v1alpha1", "kind": "ToolCachePolicy",
                "metadata": {"name": "dup"}, "spec": {"servers": servers}}  # fmt: skip
    result = crds.kubectl("-n", "default", "apply", "-f", "-", input=yaml.safe_dump(manifest),
                          check=False)  # fmt: skip
    assert result.returncode != 0
    assert "spec.servers[1]: Duplicate value" in result.stderr


def test_a_missing_secret_gives_ready_false_with_a_reason_and_an_event_until_it_appears(
    operator: op.OperatorProcess, namespace: str
) -> None:
    plane = operator.plane
    op.apply(plane, namespace, op.llm_policy("keyed", upstream={
        "apiKeySecretRef": {"name": "absent", "key": "api-key"}}))  # fmt: skip

    ready = op.wait_for(
        "Ready=False",
        lambda: op.condition(op.get(plane, namespace, "lbp/keyed"), "Ready") or None,
    )
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotFound")
    assert f"Secret {namespace}/absent not found" in ready["message"]
    events = op.wait_for(
        "a Warning event",
        lambda: op.events(plane, namespace, "keyed", "SecretNotFound"),
    )
    assert {e["type"] for e in events} == {"Warning"}
    assert op.get(plane, namespace, "deployment/keyed-llm") is None  # nothing half-made

    plane.kubectl("-n", namespace, "create", "secret", "generic", "absent",
                  "--from-literal=api-key=sk-test")  # fmt: skip
    op.ready_policy(plane, namespace, "lbp", "keyed")
    assert operator.process is not None
    assert operator.process.poll() is None  # retried, never crashed


def test_a_service_monitor_follows_the_spec_once_its_crd_is_served(
    operator: op.OperatorProcess, namespace: str
) -> None:
    plane = operator.plane
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(op.SERVICE_MONITOR_CRD))
    plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                  "crd/servicemonitors.monitoring.coreos.com")  # fmt: skip
    asked = {"serviceMonitor": True, "interval": "7s"}
    op.apply(plane, namespace, op.llm_policy("watched", metrics=asked))

    monitor = op.wait_for(
        "ServiceMonitor", lambda: op.get(plane, namespace, "servicemonitor/watched-llm")
    )
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "7s"}]

    op.apply(plane, namespace, op.llm_policy("watched", metrics={"serviceMonitor": False}))
    op.wait_for(
        "ServiceMonitor removed",
        lambda: op.get(plane, namespace, "servicemonitor/watched-llm") is None,
    )


def test_the_config_map_the_operator_rendered_runs_a_real_proxy(
    operator: op.OperatorProcess,
    namespace: str,
    simulator: Simulator,
    start_proxy: ProxyFactory,
) -> None:
    plane = operator.plane
    plane.kubectl("-n", namespace, "create", "secret", "generic", "upstream",
                  "--from-literal=api-key=sk-from-the-secret")  # fmt: skip
    op.apply(plane, namespace, op.llm_policy(
        "local",
        upstream={"url": simulator.url, "apiKeySecretRef": {"name": "upstream", "key": "api-key"}},
        batching={"maxWaitMilliseconds": 2},
    ))  # fmt: skip
    op.ready_policy(plane, namespace, "lbp", "local")
    config_map = op.config_map(plane, namespace, "local-llm")
    assert config_map is not None

    config = yaml.safe_load(config_map["data"][proxyconfig.CONFIG_FILE])
    env = op.container_env(plane, namespace, "local-llm")
    config["admin"]["port"] = free_port()  # several proxies share this host, unlike pods
    proxy = start_proxy(config, env=env)

    client = openai.OpenAI(base_url=proxy.url, api_key="caller-key", max_retries=0)
    messages: Any = [{"role": "user", "content": "hello"}]
    for _ in range(2):
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                                temperature=0)  # fmt: skip
        assert answer.choices[0].message.content
    client.close()

    assert simulator.stats.authorizations == {"Bearer sk-from-the-secret"}
    ratio = asyncio.run(scrape(proxy.base + "/metrics"))
    assert ratio == 0.5  # one miss, then one hit: the operator's hit-ratio reading


def test_a_tool_policys_config_map_runs_a_real_gateway_over_real_mcp_servers(
    operator: op.OperatorProcess,
    namespace: str,
    start_proxy: ProxyFactory,
    mcp_normal: McpServer,
    mcp_fast: McpServer,
) -> None:
    plane = operator.plane
    plane.kubectl("-n", namespace, "create", "secret", "generic", "normal-headers",
                  "--from-literal=X_Team=tools")  # fmt: skip
    servers = [
        {"name": "normal", "url": mcp_normal.url, "headersSecretRef": {"name": "normal-headers"}},
        {"name": "fast", "url": mcp_fast.url, "timeoutSeconds": 10},
    ]
    manifest = {"apiVersion": "sluice.dev/v1alpha1", "kind": "ToolCachePolicy",
                "metadata": {"name": "tools"}, "spec": {"servers": servers}}  # fmt: skip
    op.apply(plane, namespace, manifest)
    op.ready_policy(plane, namespace, "tcp", "tools")
    config_map = op.config_map(plane, namespace, "tools-mcp")
    deployment = op.get(plane, namespace, "deployment/tools-mcp")
    assert config_map is not None
    assert deployment is not None
    config = yaml.safe_load(config_map["data"][proxyconfig.CONFIG_FILE])
    (source,) = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert source["secretRef"] == {"name": "normal-headers"}
    config["admin"]["port"] = free_port()
    proxy = start_proxy(config, env=op.container_env(plane, namespace, "tools-mcp"))

    async def use() -> set[str]:
        async with mcp.Client(f"{proxy.base}/mcp") as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            echoed = await client.call_tool("fast.echo", {"text": "from the configmap"})
            assert echoed.content[0].text == "from the configmap"  # type: ignore[union-attr]
        return names

    names = asyncio.run(use())
    assert {"normal.echo", "fast.echo", "fast.add"} <= names
    status, page = proxy.get("/metrics")
    assert status == 200
    caches = policies.KINDS["ToolCachePolicy"].caches
    shown = podmetrics.combine([podmetrics.parse(page.decode(), caches)], ["normal", "fast"])
    assert shown["servers"] == "2/2"
    assert shown["tools"] == len(names)


async def scrape(url: str) -> float | None:
    caches = policies.KINDS["LLMBatchPolicy"].caches
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        pages = await podmetrics.scrape(session, [url], caches)
    ratio: float | None = podmetrics.combine(pages, None).get("hitRatio")
    return ratio


PodPage = Callable[[dict[str, Any], str], None]


@pytest.fixture
def pod_page(operator: op.OperatorProcess, namespace: str) -> Iterator[PodPage]:
    """Serve a `/metrics` page for a pod: on a loopback address, which becomes the pod's IP.

    kwok's pod IPs lead nowhere, and the operator reads every pod at the proxy's port; any
    127.x.y.z is this host, so the pod is moved onto a fresh one of those (kwok leaves a Running
    pod's status alone) and the page is served there, on the proxy's port.
    """
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(pod: dict[str, Any], page: str) -> None:
        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = page.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # the operator reads it every second
                pass

        ip = f"127.{random.randrange(1, 255)}.{random.randrange(256)}.{random.randrange(1, 255)}"
        server = http.server.ThreadingHTTPServer((ip, proxyconfig.PORT), Page)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        moved = {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}}
        name = pod["metadata"]["name"]
        operator.plane.kubectl("-n", namespace, "patch", f"pod/{name}", "--subresource=status",
                               "--type=merge", "-p", json.dumps(moved))  # fmt: skip

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def gateway_page(
    up: dict[str, int], tools: dict[str, int], lookups: dict[tuple[str, str], int]
) -> str:
    """What a gateway's `/metrics` says, in the names sluice.proxy.metrics declares."""
    lines = ["# TYPE sluice_mcp_upstream_up gauge"]
    lines += [f'sluice_mcp_upstream_up{{server="{name}"}} {value}' for name, value in up.items()]
    lines += ["# TYPE sluice_mcp_tools gauge"]
    lines += [f'sluice_mcp_tools{{server="{name}"}} {value}' for name, value in tools.items()]
    lines += ["# TYPE sluice_cache_requests_total counter"]
    lines += [
        f'sluice_cache_requests_total{{cache="{cache}",result="{result}"}} {value}'
        for (cache, result), value in lookups.items()
    ]
    return "\n".join(lines) + "\n"


def test_a_tool_policys_status_shows_its_servers_and_tools_as_its_pods_metrics_say(
    operator: op.OperatorProcess, namespace: str, pod_page: PodPage
) -> None:
    plane = operator.plane
    servers = [{"name": name, "url": f"http://{name}.tools:8080/mcp"} for name in ("a", "b", "c")]
    spec = {"servers": servers, "proxy": {"replicas": 2}}
    op.apply(plane, namespace, {"apiVersion": "sluice.dev/v1alpha1", "kind": "ToolCachePolicy",
                                "metadata": {"name": "tools"}, "spec": spec})  # fmt: skip
    op.ready_policy(plane, namespace, "tcp", "tools")
    selector = resources.label_selector("ToolCachePolicy", "tools")
    pods = json.loads(
        plane.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json").stdout
    )["items"]
    assert len(pods) == 2

    # Both pods reach a; the second finds b down; neither has contacted c yet. The chat
    # look-ups are not this kind's and do not count.
    first = {("tools_list", "hit"): 3, ("tools_list", "miss"): 1, ("chat", "hit"): 90}
    second = {("tool_results", "hit"): 1, ("tool_results", "miss"): 3}
    pod_page(pods[0], gateway_page({"a": 1, "b": 1}, {"a": 3, "b": 4}, first))
    pod_page(pods[1], gateway_page({"a": 1, "b": 0}, {"a": 3, "b": 4}, second))

    def shown() -> dict[str, Any] | None:
        status = (op.get(plane, namespace, "tcp/tools") or {}).get("status", {})
        return status if status.get("servers") == "1/3" else None

    status = op.wait_for("servers 1/3 in the status", shown)
    assert (status["tools"], status["hitRatio"]) == (7, 0.5)
    # kubectl pads columns with at least three spaces; "HIT RATIO" has one.
    table = plane.kubectl("-n", namespace, "get", "tcp", "tools").stdout.splitlines()
    header, row = (re.split(r"\s{2,}", line.strip()) for line in table[:2])
    columns = dict(zip(header, row, strict=True))
    del columns["AGE"]
    assert columns == {
        "NAME": "tools", "READY": "True", "ENDPOINT": status["endpoint"], "REPLICAS": "2",
        "HIT RATIO": "0.5", "SERVERS": "1/3", "TOOLS": "7",
    }  # fmt: skip


def pods_of(plane: cp.ControlPlane, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    selector = resources.label_selector(kind, name)
    found = plane.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json").stdout
    return [p for p in json.loads(found)["items"] if not p["metadata"].get("deletionTimestamp")]


def patch(plane: cp.ControlPlane, namespace: str, resource: str, body: Any, kind: str) -> None:
    plane.kubectl("-n", namespace, "patch", resource, f"--type={kind}", "-p", json.dumps(body))


def test_a_spec_the_api_server_refuses_leaves_old_pods_serving_and_a_revert_converges(
    operator: op.OperatorProcess, namespace: str
) -> None:
    plane = operator.plane
    op.apply(plane, namespace, op.llm_policy("edge", proxy={"replicas": 1}))
    op.ready_policy(plane, namespace, "lbp", "edge")
    serving = op.config_map(plane, namespace, "edge-llm")
    assert serving is not None

    # Huge pages whose request is not their limit: the CRD lets it by, the Deployment's own
    # validation refuses it (HTTP 422).
    resources_ = {"requests": {"hugepages-2Mi": "2Mi"}, "limits": {"hugepages-2Mi": "4Mi"}}
    refused = {"spec": {"proxy": {"resources": resources_}, "batching": {"maxBatchSize": 5}}}
    patch(plane, namespace, "lbp/edge", refused, "merge")

    def degraded() -> dict[str, Any] | None:
        policy = op.get(plane, namespace, "lbp/edge")
        found = op.condition(policy, "Degraded")
        current = found.get("observedGeneration") == (policy or {})["metadata"]["generation"]
        return policy if found.get("reason") == "SpecRejected" and current else None

    policy = op.wait_for("Degraded=True, SpecRejected", degraded)
    assert op.condition(policy, "Degraded")["status"] == "True"
    assert op.condition(policy, "Ready")["status"] == "True"  # the old pod still serves
    assert "applying the Deployment" in op.condition(policy, "Degraded")["message"]
    # The pods keep the config they were rolled out with; nothing rewrote it.
    assert op.config_map(plane, namespace, "edge-llm") == serving
    pods = pods_of(plane, namespace, "LLMBatchPolicy", "edge")
    assert {p["metadata"]["annotations"][resources.CHECKSUM_ANNOTATION] for p in pods} == {
        checksum(op.get(plane, namespace, "deployment/edge-llm"))
    }
    # Retried (2 s, then 4 s) without a second Event.
    op.wait_for("a retry", lambda: 'trigger="retry"' in operator.metrics())
    assert len(op.events(plane, namespace, "edge", "SpecRejected")) == 1

    patch(plane, namespace, "lbp/edge", [
        {"op": "remove", "path": "/spec/proxy/resources"},
        {"op": "remove", "path": "/spec/batching/maxBatchSize"},
    ], "json")  # fmt: skip

    policy = op.ready_policy(plane, namespace, "lbp", "edge")
    assert policy["metadata"]["generation"] == 3
    assert op.condition(policy, "Degraded")["status"] == "False"
    assert op.config_map(plane, namespace, "edge-llm") == serving


def test_an_object_of_a_childs_name_the_policy_does_not_own_is_left_alone(
    operator: op.OperatorProcess, namespace: str
) -> None:
    plane = operator.plane
    plane.kubectl("-n", namespace, "create", "service", "clusterip", "taken-llm", "--tcp=80:80")
    before = op.get(plane, namespace, "service/taken-llm")
    assert before is not None
    op.apply(plane, namespace, op.llm_policy("taken"))

    ready = op.wait_for(
        "Ready=False, Conflict",
        lambda: (
            op.condition(op.get(plane, namespace, "lbp/taken"), "Ready").get("reason") == "Conflict"
            and op.condition(op.get(plane, namespace, "lbp/taken"), "Ready")
        ),
    )
    assert ready["status"] == "False"
    assert f"Service {namespace}/taken-llm" in ready["message"]
    (event,) = op.wait_for(
        "a Conflict event", lambda: op.events(plane, namespace, "taken", "Conflict")
    )
    assert f"Service {namespace}/taken-llm" in event["message"]
    after = op.get(plane, namespace, "service/taken-llm")
    assert after is not None
    assert after["metadata"].get("ownerReferences") is None
    assert after["spec"]["ports"] == before["spec"]["ports"]
    assert op.get(plane, namespace, "deployment/taken-llm") is None  # nothing half-made


def test_rotating_a_referenced_secret_rolls_the_pods(
    operator: op.OperatorProcess, namespace: str
) -> None:
    plane = operator.plane
    plane.kubectl("-n", namespace, "create", "secret", "generic", "upstream",
                  "--from-literal=api-key=sk-old", "--from-literal=unused=x")  # fmt: skip
    key_ref = {"name": "upstream", "key": "api-key"}
    op.apply(plane, namespace, op.llm_policy("rotated", upstream={"apiKeySecretRef": key_ref},
                                             proxy={"replicas": 1}))  # fmt: skip
    op.ready_policy(plane, namespace, "lbp", "rotated")

    def secrets_sum() -> str:
        deployment = op.get(plane, namespace, "deployment/rotated-llm") or {}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        return str(annotations[resources.SECRETS_ANNOTATION])

    first = secrets_sum()
    new_key = base64.b64encode(b"sk-new").decode()
    patch(plane, namespace, "secret/upstream", {"data": {"api-key": new_key}}, "merge")

    op.wait_for("the pod template rolled", lambda: secrets_sum() != first)
    second = secrets_sum()
    op.wait_for(
        "the pod on the new Secret",
        lambda: (
            {
                p["metadata"]["annotations"][resources.SECRETS_ANNOTATION]
                for p in pods_of(plane, namespace, "LLMBatchPolicy", "rotated")
            }
            == {second}
        ),
    )
    assert op.container_env(plane, namespace, "rotated-llm")["SLUICE_UPSTREAM_API_KEY"] == "sk-new"


def reconciles(operator: op.OperatorProcess, trigger: str) -> float:
    """Reconciles of LLMBatchPolicies so far with this trigger, from the operator's /metrics."""
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith("sluice_operator_reconciles_total{"):
            labels, value = line.rsplit(" ", 1)
            if 'kind="LLMBatchPolicy"' in labels and f'trigger="{trigger}"' in labels:
                total += float(value)
    return total


def terminating_namespaces(plane: cp.ControlPlane) -> list[str]:
    listing = plane.kubectl(
        "get",
        "namespaces",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}",
    ).stdout
    return [
        name
        for name, _, phase in (n.partition("=") for n in listing.split())
        if phase == "Terminating"
    ]


def test_child_events_without_drift_cause_no_reconcile(
    operator: op.OperatorProcess, namespace: str
) -> None:
    plane = operator.plane
    # The counter is the operator's, for every policy: earlier tests' namespaces, still being
    # deleted, take their children first and so cause drift reconciles of their own.
    op.wait_for("earlier namespaces gone", lambda: not terminating_namespaces(plane))
    before = reconciles(operator, "child")
    op.apply(plane, namespace, op.llm_policy("quiet"))
    op.ready_policy(plane, namespace, "lbp", "quiet")

    # The Deployment's status moved many times on the way to Ready: none of it was drift.
    assert reconciles(operator, "child") == before
    plane.kubectl("-n", namespace, "scale", "deployment/quiet-llm", "--replicas=4")
    op.wait_for(
        "drift repaired",
        lambda: (op.get(plane, namespace, "deployment/quiet-llm") or {})["spec"]["replicas"] == 2,
    )
    assert reconciles(operator, "child") > before


def test_autoscaling_owns_an_hpa_and_leaves_the_deployments_replicas_to_it(
    operator: op.OperatorProcess, namespace: str
) -> None:
    plane = operator.plane
    op.apply(plane, namespace, op.llm_policy("scaled", proxy={"replicas": 1}))
    op.ready_policy(plane, namespace, "lbp", "scaled")
    autoscaling = {"minReplicas": 3, "maxReplicas": 5, "targetCpuUtilization": 60}
    patch(
        plane, namespace, "lbp/scaled", {"spec": {"proxy": {"autoscaling": autoscaling}}}, "merge"
    )

    hpa = op.wait_for(
        "the HPA", lambda: op.get(plane, namespace, "horizontalpodautoscaler/scaled-llm")
    )
    policy = op.get(plane, namespace, "lbp/scaled")
    assert policy is not None
    (owner,) = hpa["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "LLMBatchPolicy", policy["metadata"]["uid"], True)  # fmt: skip
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 5)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "scaled-llm"

    def replicas() -> int:
        return int((op.get(plane, namespace, "deployment/scaled-llm") or {})["spec"]["replicas"])

    # The autoscaler raises the Deployment to its minimum; the operator no longer sets it.
    op.wait_for("the HPA's minimum", lambda: replicas() == 3)
    budget = op.wait_for(
        "a budget for minReplicas 3",
        lambda: op.get(plane, namespace, "poddisruptionbudget/scaled-llm"),
    )
    assert budget["spec"]["maxUnavailable"] == 1
    shown = plane.kubectl("-n", namespace, "get", "deployment/scaled-llm", "-o", "json",
                          "--show-managed-fields").stdout  # fmt: skip
    deployment = json.loads(shown)
    managers = {
        e["manager"]
        for e in deployment["metadata"]["managedFields"]
        if "f:replicas" in e.get("fieldsV1", {}).get("f:spec", {})
    }
    assert "sluice-operator" not in managers
    # Another spec change is applied without fighting over replicas.
    patch(plane, namespace, "lbp/scaled", {"spec": {"batching": {"maxBatchSize": 16}}}, "merge")
    op.wait_for(
        "generation 3 observed",
        lambda: (op.get(plane, namespace, "lbp/scaled") or {}).get("status", {}).get(
            "observedGeneration") == 3,
    )  # fmt: skip
    assert replicas() == 3

    patch(
        plane,
        namespace,
        "lbp/scaled",
        {"spec": {"proxy": {"autoscaling": None, "replicas": 1}}},
        "merge",
    )
    op.wait_for(
        "the HPA deleted",
        lambda: op.get(plane, namespace, "horizontalpodautoscaler/scaled-llm") is None,
    )
    op.wait_for("replicas back to the spec", lambda: replicas() == 1)
    op.wait_for(
        "no budget for one pod",
        lambda: op.get(plane, namespace, "poddisruptionbudget/scaled-llm") is None,
    )
