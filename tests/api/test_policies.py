"""The CRD spec models: defaults, the cross-field rules mirrored from CEL, and the examples."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import pydantic
import pytest
import yaml

from sluice import api
from sluice.api import policies

REPO = pathlib.Path(__file__).resolve().parents[2]
KEY_REF = {"name": "openai", "key": "api-key"}


def test_an_empty_llm_spec_is_fully_defaulted() -> None:
    spec = api.LLMBatchPolicySpec()
    assert spec.upstream.url == "https://api.openai.com/v1"
    assert spec.upstream.api_key_secret_ref is None
    assert spec.batching.max_batch_size == 32
    assert spec.cache.backend == "memory"
    assert (spec.proxy.replicas, spec.metrics.service_monitor) == (2, False)


def test_spec_models_extend_the_shared_settings_with_secret_references_only() -> None:
    pairs = [
        (policies.UpstreamSpec, api.UpstreamSettings, {"api_key_secret_ref"}),
        (policies.RedisSpec, api.RedisSettings, {"url_secret_ref"}),
        (policies.CacheSpec, api.CacheSettings, {"redis"}),
        (
            policies.LLMBatchPolicySpec,
            api.LLMSettings,
            {"upstream", "cache", "proxy", "metrics", "admin"},
        ),
        (policies.ToolCacheSpec, api.ToolCacheSettings, {"redis"}),
        (policies.MCPServerSpec, api.MCPServerSettings, {"headers_secret_ref"}),
        (
            policies.ToolCachePolicySpec,
            api.MCPSettings,
            {"servers", "cache", "proxy", "metrics", "admin"},
        ),
    ]
    for spec, shared, added in pairs:
        assert issubclass(spec, shared)
        assert set(spec.model_fields) - set(shared.model_fields) == added


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        pytest.param(
            policies.UpstreamSpec,
            {"url": "http://a/v1", "endpoints": ["http://b/v1"]},
            "set either url or endpoints",
            id="url-and-endpoints",
        ),
        pytest.param(
            policies.ResourceRequirements,
            {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}},
            "no request may exceed its limit",
            id="request-over-limit",
        ),
        pytest.param(
            policies.ResourceRequirements,
            {"requests": {"memory": "2Gi"}, "limits": {"memory": "2G"}},
            "no request may exceed its limit",
            id="binary-over-decimal",
        ),
        pytest.param(
            policies.ResourceRequirements,
            {"limits": {"gpu": 1}},
            "resource names are cpu, memory",
            id="unknown-resource",
        ),
        pytest.param(
            policies.AutoscalingSpec,
            {"minReplicas": 5, "maxReplicas": 3},
            "minReplicas must not exceed maxReplicas",
            id="min-over-max",
        ),
        pytest.param(
            policies.ProxySpec,
            {"autoscaling": {}, "resources": {"requests": {"memory": "1Gi"}}},
            "needs resources.requests.cpu",
            id="autoscaling-without-cpu-request",
        ),
        pytest.param(
            policies.CacheSpec, {"backend": "redis"}, "need redis.urlSecretRef", id="redis-no-url"
        ),
        pytest.param(
            policies.CacheSpec, {"backend": "tiered"}, "need redis.urlSecretRef", id="tiered-no-url"
        ),
        pytest.param(
            policies.LLMBatchPolicySpec,
            {"pool": {"maxConnections": 5, "maxKeepaliveConnections": 6}},
            "must not exceed maxConnections",
            id="keepalive-over-max",
        ),
        pytest.param(
            policies.LLMBatchPolicySpec,
            {"deferred": {"store": "redis"}},
            "deferred.store redis needs cache.redis.urlSecretRef",
            id="deferred-redis-no-url",
        ),
        pytest.param(
            policies.ToolCachePolicySpec,
            {"servers": [{"name": "a", "url": "http://a"}, {"name": "a", "url": "http://b"}]},
            "unique",
            id="duplicate-server",
        ),
    ],
)
def test_cross_field_rules_hold_in_pydantic_as_in_cel(
    model: type[pydantic.BaseModel], data: dict[str, Any], message: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        model.model_validate(data)


@pytest.mark.parametrize(
    ("model", "data"),
    [
        pytest.param(
            policies.UpstreamSpec,
            {"apiKeySecretRef": {"name": "../../kube-system/secrets/x", "key": "k"}},
            id="key-ref-out-of-the-namespace",
        ),
        pytest.param(
            policies.MCPServerSpec,
            {"name": "gh", "url": "http://gh/mcp", "headersSecretRef": {"name": "a/b"}},
            id="headers-ref-with-a-slash",
        ),
        pytest.param(policies.AdminSpec, {"tokenSecretRef": {"name": "", "key": "k"}}, id="empty"),
        pytest.param(
            policies.RedisSpec, {"urlSecretRef": {"name": "Redis", "key": "url"}}, id="upper"
        ),
    ],
)
def test_a_secret_reference_names_a_secret_of_the_namespace_and_nothing_else(
    model: type[pydantic.BaseModel], data: dict[str, Any]
) -> None:
    # The name becomes part of the operator's API path: `..` or `/` would leave the namespace.
    with pytest.raises(pydantic.ValidationError, match="name"):
        model.model_validate(data)


@pytest.mark.parametrize(
    ("model", "data"),
    [
        pytest.param(
            policies.UpstreamSpec, {"endpoints": ["http://a/v1", "https://b/v1"]}, id="eps"
        ),
        pytest.param(
            policies.CacheSpec,
            {"backend": "tiered", "redis": {"urlSecretRef": {"name": "r", "key": "url"}}},
            id="tiered",
        ),
        pytest.param(
            policies.LLMBatchPolicySpec,
            {"pool": {"maxConnections": 5, "maxKeepaliveConnections": 5}},
            id="keepalive-equal",
        ),
        pytest.param(
            policies.ResourceRequirements,
            {
                "requests": {"cpu": "500m", "memory": "1G", "hugepages-2Mi": "0"},
                "limits": {"cpu": 1, "memory": "1Gi"},
            },
            id="requests-within-limits",
        ),
        pytest.param(
            policies.ResourceRequirements,
            {"requests": {"memory": "1e3"}, "limits": {"memory": "1k"}},
            id="exponent-equal",
        ),
        pytest.param(
            policies.LLMBatchPolicySpec,
            {
                "deferred": {"store": "redis"},
                "cache": {"redis": {"urlSecretRef": {"name": "r", "key": "u"}}},
            },
            id="deferred-redis-with-url",
        ),
    ],
)
def test_what_the_rules_allow(model: type[pydantic.BaseModel], data: dict[str, Any]) -> None:
    model.model_validate(data)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param({"batching": {"maxBatchSize": 0}}, "batching.maxBatchSize", id="batch-0"),
        pytest.param({"cache": {"ttlSeconds": {"chat": -1}}}, "cache.ttlSeconds.chat", id="ttl"),
        pytest.param({"cache": {"backend": "disk"}}, "cache.backend", id="backend"),
        pytest.param(
            {"proxy": {"resources": {"limits": {"cpu": "lots"}}}},
            "proxy.resources.limits.cpu",
            id="quantity",
        ),
        pytest.param({"metrics": {"interval": "soon"}}, "metrics.interval", id="interval"),
        pytest.param(
            {"proxy": {"resources": {"requests": {"cpu": "-1"}}}},
            "proxy.resources.requests.cpu",
            id="negative-quantity",
        ),
        pytest.param({"upstream": {"url": "https://"}}, "upstream.url", id="url-without-host"),
        pytest.param({"upstream": {"url": "https://a b/v1"}}, "upstream.url", id="url-space"),
        pytest.param(
            {"upstream": {"endpoints": ["ftp://b"]}}, "upstream.endpoints.0", id="endpoint-scheme"
        ),
    ],
)
def test_out_of_range_fields_are_rejected_by_name(data: dict[str, Any], field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as error:
        api.LLMBatchPolicySpec.model_validate(data)
    locations = [".".join(str(p) for p in e["loc"]) for e in error.value.errors()]
    assert any(loc.startswith(field) for loc in locations), locations


def test_a_tool_cache_policy_needs_at_least_one_server() -> None:
    with pytest.raises(pydantic.ValidationError, match="servers"):
        api.ToolCachePolicySpec.model_validate({})


def test_condition_times_are_written_as_kubernetes_writes_them() -> None:
    when = datetime.datetime(
        2025, 3, 1, 13, 0, 5, 123, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )
    condition = api.Condition(
        type="Ready", status="True", reason="Available", last_transition_time=when
    )
    assert (
        condition.model_dump(mode="json", by_alias=True)["lastTransitionTime"]
        == "2025-03-01T12:00:05Z"
    )


def example_policies() -> list[Any]:
    documents = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("apiVersion") == policies.API_VERSION:
                documents.append(
                    pytest.param(document, id=f"{path.stem}/{document['metadata']['name']}")
                )
    return documents


@pytest.mark.parametrize("document", example_policies())
def test_every_example_policy_is_valid(document: dict[str, Any]) -> None:
    policies.KINDS[document["kind"]].spec.model_validate(document.get("spec", {}))
