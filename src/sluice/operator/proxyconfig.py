"""A policy's spec rendered as the proxy's config file, and the Secrets the proxy reads as env.

The one place where the two halves of the contract meet: a CRD spec names Secrets, the config
names environment variables, and `Rendered` holds both sides of that mapping. The config is
validated through `sluice.api.ProxyConfig`, so the operator can only ever write a ConfigMap
the proxy accepts. Pure: no kopf, no I/O. `resources` turns the result into objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import yaml

from sluice import api
from sluice.api import policies

CONFIG_DIR = "/etc/sluice"
CONFIG_FILE = "proxy.yaml"
PORT = 8080
ADMIN_PORT = 8081

UPSTREAM_API_KEY_ENV = "SLUICE_UPSTREAM_API_KEY"
REDIS_URL_ENV = "SLUICE_REDIS_URL"


@dataclasses.dataclass(frozen=True)
class SecretEnv:
    """One environment variable taken from one key of a Secret."""

    env: str
    secret: str
    key: str


@dataclasses.dataclass(frozen=True)
class SecretEnvFrom:
    """Every key of a Secret as an environment variable, each name prefixed."""

    prefix: str
    secret: str


@dataclasses.dataclass(frozen=True)
class Rendered:
    """The proxy config for a policy, and the Secrets the proxy needs in its environment."""

    config: api.ProxyConfig
    env: tuple[SecretEnv, ...] = ()
    env_from: tuple[SecretEnvFrom, ...] = ()

    @property
    def text(self) -> str:
        """The config file: YAML, camelCase keys, as `sluice proxy --config` reads it."""
        data = self.config.model_dump(mode="json", by_alias=True, exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False)

    @property
    def checksum(self) -> str:
        """SHA-256 of the config file: a pod-template annotation, so pods roll when it changes."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def secret_names(self) -> list[str]:
        """Every Secret the proxy reads, each once, in a stable order."""
        names = [e.secret for e in self.env] + [e.secret for e in self.env_from]
        return sorted(set(names))


def render(policy: policies.Policy) -> Rendered:
    """The proxy config and secret environment of either kind of policy."""
    listen = {"host": "0.0.0.0", "port": PORT}
    listen["shutdownGraceSeconds"] = policy.spec.proxy.shutdown_grace_seconds
    admin = {"port": ADMIN_PORT}
    if isinstance(policy, policies.LLMBatchPolicy):
        llm, env = llm_section(policy.spec)
        config = {"listen": listen, "llm": llm, "admin": admin}
        return Rendered(api.config.parse(config, source=f"{policy.kind}.spec"), env=env)
    mcp, env, env_from = mcp_section(policy.spec)
    config = {"listen": listen, "mcp": mcp, "admin": admin}
    parsed = api.config.parse(config, source=f"{policy.kind}.spec")
    return Rendered(parsed, env=env, env_from=env_from)


def llm_section(spec: policies.LLMBatchPolicySpec) -> tuple[dict[str, Any], tuple[SecretEnv, ...]]:
    """The `llm` section: the spec less proxy/metrics, Secret references as env var names."""
    section = spec.model_dump(by_alias=True, exclude={"proxy", "metrics"})
    upstream, cache = section["upstream"], section["cache"]
    env: list[SecretEnv] = []
    if (key_ref := upstream.pop("apiKeySecretRef")) is not None:
        upstream["apiKeyEnv"] = UPSTREAM_API_KEY_ENV
        env.append(SecretEnv(UPSTREAM_API_KEY_ENV, key_ref["name"], key_ref["key"]))
    env.extend(redis_env(cache))
    return section, tuple(env)


def redis_env(cache: dict[str, Any]) -> list[SecretEnv]:
    """A cache section's Redis URL Secret as an env var name (either kind of policy)."""
    if (url_ref := cache["redis"].pop("urlSecretRef")) is None:
        return []
    cache["redis"]["urlEnv"] = REDIS_URL_ENV
    return [SecretEnv(REDIS_URL_ENV, url_ref["name"], url_ref["key"])]


def mcp_section(
    spec: policies.ToolCachePolicySpec,
) -> tuple[dict[str, Any], tuple[SecretEnv, ...], tuple[SecretEnvFrom, ...]]:
    """The `mcp` section: each server's header Secret becomes an env var prefix, the cache's
    Redis URL Secret an env var."""
    section = spec.model_dump(by_alias=True, exclude={"proxy", "metrics"})
    env = redis_env(section["cache"])
    env_from: list[SecretEnvFrom] = []
    for index, server in enumerate(section["servers"]):
        if (ref := server.pop("headersSecretRef")) is not None:
            prefix = headers_prefix(index)
            server["headersEnvPrefix"] = prefix
            env_from.append(SecretEnvFrom(prefix, ref["name"]))
    return section, tuple(env), tuple(env_from)


def headers_prefix(index: int) -> str:
    """`SLUICE_MCP_<index>_`, by position rather than name: no prefix may start another.

    Names would not do: `SLUICE_MCP_GITHUB_` starts `SLUICE_MCP_GITHUB_ENTERPRISE_…`, so the
    `github` server would be sent the other server's headers. Digits followed by `_` never do.
    """
    return f"SLUICE_MCP_{index}_"
