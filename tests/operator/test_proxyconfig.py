"""Rendering a spec as the proxy's config: what the proxy reads back is what the spec says."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from sluice.api import config, policies
from sluice.operator import proxyconfig
from tests.operator import factories


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(factories.llm(), id="llm-defaults"),
        pytest.param(
            factories.llm(
                upstream={"endpoints": ["http://a:8000/v1", "http://b:8000/v1"]},
                batching={"maxBatchSize": 8, "maxWaitMilliseconds": 3},
                cache={"backend": "redis", "redis": {"urlSecretRef": {"name": "r", "key": "u"}}},
                pool={"maxConnections": 10, "maxKeepaliveConnections": 10},
            ),
            id="llm-everything",
        ),
        pytest.param(factories.tools(toolResults=[{"tool": "gh.search_*"}]), id="mcp"),
    ],
)
def test_the_config_file_the_proxy_loads_equals_the_rendered_config(
    policy: policies.Policy, tmp_path: pytest.TempPathFactory
) -> None:
    rendered = proxyconfig.render(policy)
    path = tmp_path / "proxy.yaml"  # type: ignore[operator]
    path.write_text(rendered.text)
    assert config.load(path) == rendered.config


def test_llm_spec_fields_arrive_in_the_llm_section_unchanged() -> None:
    policy = factories.llm(batching={"maxBatchSize": 8}, cache={"ttlSeconds": {"chat": 7}})
    llm = proxyconfig.render(policy).config.llm
    assert llm is not None
    assert llm.batching == policy.spec.batching
    assert llm.pool == policy.spec.pool
    assert llm.cache.ttl_seconds.chat == 7
    assert llm.upstream.base_urls == policy.spec.upstream.base_urls
    assert proxyconfig.render(policy).config.mcp is None


def test_the_proxy_serves_on_all_addresses_of_the_pod_at_the_service_port() -> None:
    listen = proxyconfig.render(factories.tools()).config.listen
    assert (listen.host, listen.port) == ("0.0.0.0", proxyconfig.PORT)


def test_mcp_header_secrets_get_prefixes_of_which_none_starts_another() -> None:
    servers = [
        {"name": name, "url": f"http://{name}/mcp", "headersSecretRef": {"name": f"{name}-h"}}
        for name in ("github", "github-enterprise", "a", "a-b", "a--b", *map(str, range(12)))
    ]
    rendered = proxyconfig.render(factories.tools(servers=servers))
    prefixes = [e.prefix for e in rendered.env_from]
    assert len(prefixes) == len(servers)
    assert not any(p.startswith(q) for p, q in itertools.permutations(prefixes, 2))
    mcp = rendered.config.mcp
    assert mcp is not None
    assert [s.headers_env_prefix for s in mcp.servers] == prefixes


def test_secret_names_lists_each_referenced_secret_once() -> None:
    ref = {"name": "shared", "key": "k"}
    policy = factories.llm(
        upstream={"apiKeySecretRef": ref},
        cache={"backend": "redis", "redis": {"urlSecretRef": {"name": "shared", "key": "url"}}},
    )
    assert proxyconfig.render(policy).secret_names == ["openai-llm-admin", "shared"]


@pytest.mark.parametrize("make", [factories.llm, factories.tools], ids=["llm", "mcp"])
def test_a_redis_cluster_in_the_spec_reaches_the_rendered_config(make: Any) -> None:
    # A Sentinel set needs nothing but its URL (`redis+sentinel://…`), which is in the Secret.
    redis = {"cluster": True, "poolSize": 8, "urlSecretRef": {"name": "redis", "key": "url"}}
    rendered = proxyconfig.render(make(cache={"backend": "tiered", "redis": redis}))
    section = rendered.config.llm or rendered.config.mcp
    assert section is not None
    assert (section.cache.redis.cluster, section.cache.redis.pool_size) == (True, 8)
    assert "cluster: true" in rendered.text
    env = proxyconfig.SecretEnv(proxyconfig.REDIS_URL_ENV, "redis", "url")
    assert env in rendered.env
