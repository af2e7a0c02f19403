"""The proxy config: defaults, ranges, camelCase keys, and one-line errors naming the field."""

from __future__ import annotations

import pathlib

import pytest

from sluice import api
from sluice.api import config


def test_empty_mapping_gives_a_fully_defaulted_config() -> None:
    parsed = config.parse({})
    assert parsed.listen.port == 8080
    assert parsed.llm is None
    assert parsed.mcp is None


def test_camel_case_keys_mirror_the_crd_spec() -> None:
    parsed = config.parse(
        {
            "llm": {
                "upstream": {"url": "http://up:1/v1", "apiKeyEnv": "KEY", "timeoutSeconds": 5},
                "pool": {"maxConnections": 7, "maxKeepaliveConnections": 3},
                "batching": {"maxBatchSize": 16, "maxWaitMilliseconds": 4},
                "cache": {"backend": "redis", "redis": {"urlEnv": "R"}},
            }
        }
    )
    assert parsed.llm is not None
    assert parsed.llm.upstream.api_key_env == "KEY"
    assert parsed.llm.pool.max_connections == 7
    assert parsed.llm.batching.max_wait_milliseconds == 4
    assert parsed.llm.cache.redis.url_env == "R"


def test_endpoints_replace_url_and_lose_trailing_slashes() -> None:
    upstream = api.UpstreamConfig(endpoints=["http://a/v1/", "http://b/v1"])
    assert upstream.base_urls == ["http://a/v1", "http://b/v1"]
    assert api.UpstreamConfig(url="http://c/v1/").base_urls == ["http://c/v1"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param(
            {"llm": {"pool": {"maxConnections": 0}}}, "llm.pool.maxConnections", id="range"
        ),
        pytest.param({"listen": {"port": "http"}}, "listen.port", id="type"),
        pytest.param({"llm": {"upstream": {"url": "ftp://x"}}}, "llm.upstream.url", id="pattern"),
        pytest.param({"llm": {"cache": {"backend": "disk"}}}, "llm.cache.backend", id="enum"),
        pytest.param({"llm": {"upstrem": {}}}, "llm.upstrem", id="unknown-key"),
        pytest.param(
            {"llm": {"upstream": {"apiKeyEnv": "has space"}}},
            "llm.upstream.apiKeyEnv",
            id="env-name",
        ),
    ],
)
def test_invalid_values_raise_one_line_naming_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(api.ConfigError) as caught:
        config.parse(raw, source="proxy.yaml")
    message = str(caught.value)
    assert message.startswith(f"proxy.yaml: {field}:")
    assert "\n" not in message


def test_every_field_is_documented() -> None:
    undocumented = []
    pending: list[type[api.Model]] = [api.ProxyConfig]
    seen: set[type[api.Model]] = set()
    while pending:
        model = pending.pop()
        seen.add(model)
        for name, info in model.model_fields.items():
            if not info.description:
                undocumented.append(f"{model.__name__}.{name}")
            for candidate in _models_in(info.annotation):
                if candidate not in seen:
                    pending.append(candidate)
    assert undocumented == []


def _models_in(annotation: object) -> list[type[api.Model]]:
    if isinstance(annotation, type) and issubclass(annotation, api.Model):
        return [annotation]
    found = []
    for arg in getattr(annotation, "__args__", ()):
        found.extend(_models_in(arg))
    return found


def test_unreadable_and_malformed_files_name_the_problem(tmp_path: pathlib.Path) -> None:
    with pytest.raises(api.ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("llm: [unclosed\n")
    with pytest.raises(api.ConfigError, match=r"not valid YAML \(line 2\)"):
        config.load(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(api.ConfigError, match="expected a mapping"):
        config.load(scalar)
