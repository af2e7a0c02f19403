"""The pure builders: what a policy is made of, checked as tables without a cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sluice.api import policies
from sluice.operator import proxyconfig, resources
from tests.operator import factories

IMAGE = "registry.example/sluice:1.2.3"
KEY_REF = {"name": "openai-credentials", "key": "api-key"}
REDIS_REF = {"name": "redis-credentials", "key": "url"}


def desired(policy: policies.Policy, monitors: bool = False) -> resources.Desired:
    return resources.desired(policy, proxyconfig.render(policy), IMAGE, monitors, "sum")


def deployment(policy: policies.Policy) -> dict[str, Any]:
    found = desired(policy).find("Deployment")
    assert found is not None
    return found


def pod(policy: policies.Policy) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(policy)["spec"]["template"]["spec"]
    return spec


def checksum(policy: policies.Policy) -> str:
    annotations = deployment(policy)["spec"]["template"]["metadata"]["annotations"]
    value: str = annotations[resources.CHECKSUM_ANNOTATION]
    return value


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside a built object."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param({}, {"batching": {"maxBatchSize": 64}}, id="batch-size"),
        pytest.param({}, {"cache": {"ttlSeconds": {"chat": 60}}}, id="ttl"),
        pytest.param({}, {"upstream": {"url": "http://vllm:8000/v1"}}, id="upstream"),
        pytest.param({}, {"upstream": {"apiKeySecretRef": KEY_REF}}, id="api-key-env"),
        pytest.param({}, {"proxy": {"shutdownGraceSeconds": 5}}, id="grace"),
    ],
)
def test_checksum_annotation_changes_with_anything_in_the_config(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    assert checksum(factories.llm(**before)) != checksum(factories.llm(**after))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"proxy": {"replicas": 7}}, id="replicas"),
        pytest.param({"proxy": {"resources": {"requests": {"cpu": 2}}}}, id="resources"),
        pytest.param({"metrics": {"serviceMonitor": True}}, id="metrics"),
    ],
)
def test_checksum_annotation_ignores_what_the_proxy_never_reads(change: dict[str, Any]) -> None:
    assert checksum(factories.llm()) == checksum(factories.llm(**change))


def test_checksum_is_stable_for_the_same_spec() -> None:
    spec = {"cache": {"backend": "redis", "redis": {"urlSecretRef": REDIS_REF}}}
    assert checksum(factories.llm(**spec)) == checksum(factories.llm(**spec))


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(
            factories.llm(
                upstream={"apiKeySecretRef": KEY_REF},
                cache={"backend": "tiered", "redis": {"urlSecretRef": REDIS_REF}},
            ),
            id="llm-key-and-redis",
        ),
        pytest.param(
            factories.tools(
                servers=[
                    {"name": "gh", "url": "http://gh/mcp", "headersSecretRef": {"name": "gh-h"}},
                    {"name": "time", "url": "http://time/mcp"},
                ]
            ),
            id="mcp-headers",
        ),
    ],
)
def test_secrets_reach_the_proxy_only_by_reference_never_by_value(
    policy: policies.Policy,
) -> None:
    built = desired(policy)
    container = pod(policy)["containers"][0]
    assert all(
        "value" not in env and "secretKeyRef" in env["valueFrom"]
        for env in container.get("env", [])
    )
    assert all(set(source) == {"prefix", "secretRef"} for source in container.get("envFrom", []))
    config_map = built.find("ConfigMap")
    assert config_map is not None
    text = config_map["data"][proxyconfig.CONFIG_FILE]
    assert "SecretRef" not in text
    assert not any(name in text for name in ("openai-credentials", "redis-credentials", "gh-h"))
    assert all(node.get("kind") != "Secret" for node in walk(list(built.apply)))


def test_api_key_and_redis_url_come_from_the_referenced_secret_keys() -> None:
    policy = factories.llm(
        upstream={"apiKeySecretRef": KEY_REF},
        cache={"backend": "redis", "redis": {"urlSecretRef": REDIS_REF}},
    )
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in pod(policy)["containers"][0]["env"]}
    assert env == {
        proxyconfig.UPSTREAM_API_KEY_ENV: KEY_REF,
        proxyconfig.REDIS_URL_ENV: REDIS_REF,
        proxyconfig.ADMIN_TOKEN_ENV: {"name": "openai-llm-admin", "key": "token"},
    }


def test_a_policy_without_secrets_gets_only_the_admin_token_from_its_own_secret() -> None:
    container = pod(factories.llm())["containers"][0]
    assert [e["name"] for e in container["env"]] == [proxyconfig.ADMIN_TOKEN_ENV]
    assert "envFrom" not in container
    config = proxyconfig.render(factories.llm()).config
    assert config.admin.token_env == proxyconfig.ADMIN_TOKEN_ENV


def test_an_admin_token_secret_named_in_the_spec_is_used_instead_of_one_made() -> None:
    ref = {"name": "team-admin", "key": "bearer"}
    policy = factories.llm(admin={"tokenSecretRef": ref})
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in pod(policy)["containers"][0]["env"]}
    assert env[proxyconfig.ADMIN_TOKEN_ENV] == ref
    assert proxyconfig.admin_token(policy).name == "team-admin"


def test_the_admin_secret_made_is_owned_and_holds_the_token_given() -> None:
    secret = resources.admin_secret(factories.tools(), "t0ken")
    assert secret["metadata"]["name"] == "tools-mcp-admin"
    assert secret["stringData"] == {"token": "t0ken"}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-tools"


def test_the_config_map_is_named_by_its_content_immutable_and_mounted_by_that_name() -> None:
    first, second = factories.llm(), factories.llm(batching={"maxBatchSize": 7})
    names = []
    for policy in (first, second):
        built = desired(policy)
        config_map, workload = built.find("ConfigMap"), built.find("Deployment")
        assert config_map is not None
        assert workload is not None
        assert config_map["immutable"] is True
        assert resources.mounted_config(workload) == config_map["metadata"]["name"]
        names.append(config_map["metadata"]["name"])
    assert names[0] != names[1]
    assert names[0].startswith("openai-llm-")
    assert names[0] == desired(factories.llm()).find("ConfigMap")["metadata"]["name"]  # type: ignore[index]


def test_the_secrets_checksum_rolls_the_pods_and_counts_only_the_keys_used() -> None:
    policy = factories.llm(upstream={"apiKeySecretRef": KEY_REF})
    rendered = proxyconfig.render(policy)
    admin = {"token": "YQ=="}
    before = rendered.secrets_checksum(
        {"openai-credentials": {"api-key": "b2xk"}, "openai-llm-admin": admin}
    )
    rotated = rendered.secrets_checksum(
        {"openai-credentials": {"api-key": "bmV3"}, "openai-llm-admin": admin}
    )
    other_key = rendered.secrets_checksum(
        {"openai-credentials": {"api-key": "b2xk", "unused": "eA=="}, "openai-llm-admin": admin}
    )
    missing = rendered.secrets_checksum({"openai-credentials": None, "openai-llm-admin": admin})
    assert len({before, rotated, missing}) == 3
    assert other_key == before
    built = resources.desired(policy, rendered, IMAGE, False, rotated).find("Deployment")
    assert built is not None
    annotations = built["spec"]["template"]["metadata"]["annotations"]
    assert annotations[resources.SECRETS_ANNOTATION] == rotated


def test_with_autoscaling_an_hpa_is_owned_and_the_deployment_leaves_replicas_to_it() -> None:
    asked = {"minReplicas": 3, "maxReplicas": 9, "targetCpuUtilization": 60}
    built = desired(factories.llm(proxy={"replicas": 1, "autoscaling": asked}))
    hpa, workload = built.find("HorizontalPodAutoscaler"), built.find("Deployment")
    assert hpa is not None
    assert workload is not None
    assert "replicas" not in workload["spec"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": "openai-llm"}  # fmt: skip
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    target = hpa["spec"]["metrics"][0]["resource"]["target"]
    assert target == {"type": "Utilization", "averageUtilization": 60}
    assert built.find("PodDisruptionBudget") is not None  # minReplicas 3, though replicas is 1


@pytest.mark.parametrize(
    ("proxy", "hpa", "budget"),
    [
        pytest.param({"replicas": 3}, False, True, id="off"),
        pytest.param({"replicas": 3, "autoscaling": {"minReplicas": 1}}, True, False, id="min-1"),
    ],
)
def test_autoscaling_off_deletes_the_hpa_and_the_budget_follows_the_fewest_pods(
    proxy: dict[str, Any], hpa: bool, budget: bool
) -> None:
    built = desired(factories.llm(proxy=proxy))
    deleted = {ref.kind for ref in built.delete}
    assert (
        built.find("HorizontalPodAutoscaler") is not None,
        "HorizontalPodAutoscaler" in deleted,
    ) == (hpa, not hpa)
    assert (built.find("PodDisruptionBudget") is not None) == budget
    workload = built.find("Deployment")
    assert workload is not None
    assert ("replicas" in workload["spec"]) == (not hpa)


@pytest.mark.parametrize(
    ("replicas", "budget"),
    [
        pytest.param(0, False, id="zero"),
        pytest.param(1, False, id="one"),
        pytest.param(2, True, id="two"),
        pytest.param(5, True, id="five"),
    ],
)
def test_pod_disruption_budget_only_for_more_than_one_replica(replicas: int, budget: bool) -> None:
    built = desired(factories.llm(proxy={"replicas": replicas}))
    applied = built.find("PodDisruptionBudget") is not None
    deleted = any(ref.kind == "PodDisruptionBudget" for ref in built.delete)
    assert (applied, deleted) == (budget, not budget)


@pytest.mark.parametrize(
    ("served", "asked", "applied", "deleted"),
    [
        pytest.param(False, False, False, False, id="no-crd-not-asked"),
        pytest.param(False, True, False, False, id="no-crd-asked"),
        pytest.param(True, False, False, True, id="crd-not-asked-removes-a-stale-one"),
        pytest.param(True, True, True, False, id="crd-asked"),
    ],
)
def test_service_monitor_only_when_asked_and_its_crd_is_served(
    served: bool, asked: bool, applied: bool, deleted: bool
) -> None:
    policy = factories.llm(metrics={"serviceMonitor": asked, "interval": "15s"})
    built = desired(policy, monitors=served)
    monitor = built.find("ServiceMonitor")
    assert (monitor is not None, any(r.kind == "ServiceMonitor" for r in built.delete)) == (
        applied,
        deleted,
    )
    if monitor is not None:
        assert monitor["spec"]["endpoints"] == [
            {"port": "http", "path": "/metrics", "interval": "15s"}
        ]


@pytest.mark.parametrize("policy", [factories.llm(), factories.tools()], ids=["llm", "mcp"])
def test_every_object_is_controlled_by_its_policy(policy: policies.Policy) -> None:
    built = desired(policy, monitors=True)
    expected = {
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": policy.kind,
        "name": policy.metadata.name,
        "uid": policy.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for obj in built.apply:
        assert obj["metadata"]["ownerReferences"] == [expected]
        assert obj["metadata"]["namespace"] == factories.NAMESPACE
        assert resources.owner_of(obj) == (policy.kind, policy.metadata.name)


def test_owner_of_ignores_objects_controlled_by_something_else() -> None:
    foreign = {
        "metadata": {
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "controller": True}
            ]
        }
    }
    assert resources.owner_of(foreign) is None
    assert resources.owner_of({"metadata": {}}) is None


def test_pods_run_with_the_restricted_security_profile() -> None:
    spec = pod(factories.llm())
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": resources.PROXY_UID,
        "runAsGroup": resources.PROXY_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert spec["automountServiceAccountToken"] is False


def test_container_runs_sluice_proxy_on_the_mounted_config_with_probes() -> None:
    container = pod(factories.llm())["containers"][0]
    assert [*container["command"], *container["args"]] == [
        "sluice",
        "proxy",
        "--config",
        "/etc/sluice/proxy.yaml",
    ]
    assert container["livenessProbe"]["httpGet"] == {"port": "http", "path": "/healthz"}
    assert container["readinessProbe"]["httpGet"] == {"port": "http", "path": "/readyz"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/sluice"]["readOnly"] is True


@pytest.mark.parametrize("grace", [0, 25, 120])
def test_termination_grace_covers_the_pre_stop_pause_and_the_proxys_own_grace(grace: int) -> None:
    spec = pod(factories.llm(proxy={"shutdownGraceSeconds": grace}))
    pause = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pause + grace
    config = proxyconfig.render(factories.llm(proxy={"shutdownGraceSeconds": grace})).config
    assert config.listen.shutdown_grace_seconds == grace


def test_resources_and_image_come_from_the_spec() -> None:
    proxy = {
        "image": "mirror.local/sluice:pinned",
        "resources": {"requests": {"cpu": 1, "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    }
    container = pod(factories.llm(proxy=proxy))["containers"][0]
    assert container["image"] == "mirror.local/sluice:pinned"
    assert container["resources"] == proxy["resources"]
    assert pod(factories.llm())["containers"][0]["image"] == IMAGE


@pytest.mark.parametrize(
    ("policy", "name", "url"),
    [
        pytest.param(
            factories.llm(), "openai-llm", "http://openai-llm.team-a.svc:8080/v1", id="llm"
        ),
        pytest.param(
            factories.tools(), "tools-mcp", "http://tools-mcp.team-a.svc:8080/mcp", id="mcp"
        ),
    ],
)
def test_objects_are_named_per_kind_and_the_endpoint_is_the_service_url(
    policy: policies.Policy, name: str, url: str
) -> None:
    built = desired(policy, monitors=True).apply
    assert {o["metadata"]["name"] for o in built if o["kind"] != "ConfigMap"} == {name}
    meta = policy.metadata
    assert resources.endpoint(policy.kind, meta.namespace, meta.name) == url


def test_service_and_deployment_select_the_pods_by_the_stable_selector_only() -> None:
    policy = factories.llm()
    built = desired(policy)
    service, workload = built.find("Service"), built.find("Deployment")
    assert service is not None
    assert workload is not None
    selector = resources.selector(policy)
    assert service["spec"]["selector"] == selector
    assert workload["spec"]["selector"] == {"matchLabels": selector}
    assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in service["spec"]["ports"]] == [proxyconfig.PORT]
    assert resources.label_selector(policy.kind, "openai") == (
        "app.kubernetes.io/name=sluice-proxy,app.kubernetes.io/instance=openai-llm"
    )


def test_config_map_comes_first_so_new_pods_mount_the_new_config() -> None:
    kinds = [obj["kind"] for obj in desired(factories.llm(), monitors=True).apply]
    assert kinds[:2] == ["ConfigMap", "Deployment"]
