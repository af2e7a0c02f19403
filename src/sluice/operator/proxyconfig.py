"""A policy's spec rendered as the proxy's config file, and the Secrets the proxy reads as env.

The one place where the two halves of the contract meet: a CRD spec names Secrets, the config
names environment variables, and `Rendered` holds both sides of that mapping. The config is
validated through `sluice.api.ProxyConfig`, so the operator can only ever write a ConfigMap
the proxy accepts. Pure: no kopf, no I/O. `resources` turns the result into objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import yaml

from sluice import api
from sluice.api import policies
from sluice.api.base import SecretKeyRef

CONFIG_DIR = "/etc/sluice"
CONFIG_FILE = "proxy.yaml"
PORT = 8080
ADMIN_PORT = 8081

UPSTREAM_API_KEY_ENV = "SLUICE_UPSTREAM_API_KEY"
REDIS_URL_ENV = "SLUICE_REDIS_URL"
ADMIN_TOKEN_ENV = "SLUICE_ADMIN_TOKEN"
ADMIN_SECRET_SUFFIX, ADMIN_TOKEN_KEY = "admin", "token"
# What the operator keeps out of the proxy config's sections: how it runs, not what it does.
OPERATOR_ONLY = {"proxy", "metrics", "admin"}


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

    def secrets_checksum(self, secrets: Mapping[str, Mapping[str, str] | None]) -> str:
        """SHA-256 over what the proxy reads of each Secret (by name: its `data`, or None when
        it is missing): a pod-template annotation, so pods roll when a Secret is rotated.

        Only the keys the proxy uses count (every key of a Secret taken whole), so rotating a
        Secret's other keys rolls nothing. The values enter only the digest.
        """
        used: dict[str, Any] = {}
        for name in self.secret_names:
            data = secrets.get(name)
            whole = any(e.secret == name for e in self.env_from)
            keys = (
                sorted(data or ())
                if whole
                else sorted({e.key for e in self.env if e.secret == name})
            )
            used[name] = None if data is None else {key: data.get(key) for key in keys}
        return hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()


def admin_token(policy: policies.Policy) -> SecretKeyRef:
    """The Secret key of the admin API's token: the spec's, or the one the operator makes."""
    if (ref := policy.spec.admin.token_secret_ref) is not None:
        return ref
    child = policies.KINDS[policy.kind].child_name(policy.metadata.name)
    return SecretKeyRef(name=f"{child}-{ADMIN_SECRET_SUFFIX}", key=ADMIN_TOKEN_KEY)


def render(policy: policies.Policy) -> Rendered:
    """The proxy config and secret environment of either kind of policy.

    Raises `sluice.api.ConfigError` for a spec the proxy would refuse.
    """
    token = admin_token(policy)
    listen = {"host": "0.0.0.0", "port": PORT}
    listen["shutdownGraceSeconds"] = policy.spec.proxy.shutdown_grace_seconds
    admin = {"port": ADMIN_PORT, "tokenEnv": ADMIN_TOKEN_ENV}
    admin_env = SecretEnv(ADMIN_TOKEN_ENV, token.name, token.key)
    if isinstance(policy, policies.LLMBatchPolicy):
        llm, env = llm_section(policy.spec)
        config = {"listen": listen, "llm": llm, "admin": admin}
        parsed = api.config.parse(config, source=f"{policy.kind}.spec")
        return Rendered(parsed, env=(*env, admin_env))
    mcp, env, env_from = mcp_section(policy.spec)
    config = {"listen": listen, "mcp": mcp, "admin": admin}
    parsed = api.config.parse(config, source=f"{policy.kind}.spec")
    return Rendered(parsed, env=(*env, admin_env), env_from=env_from)


def llm_section(spec: policies.LLMBatchPolicySpec) -> tuple[dict[str, Any], tuple[SecretEnv, ...]]:
    """The `llm` section: the spec less proxy/metrics, Secret references as env var names."""
    section = spec.model_dump(by_alias=True, exclude=OPERATOR_ONLY)
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
    section = spec.model_dump(by_alias=True, exclude=OPERATOR_ONLY)
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
