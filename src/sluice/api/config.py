"""The proxy's config file: the CRD specs' shapes, with secrets named as environment variables.

The operator renders this into a ConfigMap; a person can write it by hand (DESIGN.md §4).
`load()` turns a YAML file into a `ProxyConfig` or raises `ConfigError` naming the bad field;
`parse()` does the same for a mapping (the CLI applies its flags in between).
"""

from __future__ import annotations

import pathlib
from typing import Any

import pydantic
import yaml
from pydantic import Field, model_validator

from sluice.api.base import Model
from sluice.api.llm import CacheSettings, LLMSettings, UpstreamSettings
from sluice.api.mcp import (
    MCPServerSettings,
    MCPSettings,
    ToolCacheSettings,
    check_unique_servers,
)
from sluice.api.store import RedisSettings

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the bad field."""


class Listen(Model):
    """Where the proxy serves and how it treats its callers."""

    host: str = "0.0.0.0"
    """Address to bind; `0.0.0.0` in a pod, `127.0.0.1` for a laptop."""
    port: int = Field(default=8080, ge=1, le=65535)
    """Port of the API, `/metrics` and the health endpoints."""
    max_body_bytes: int = Field(default=33554432, ge=1024, le=1073741824)
    """Largest request body accepted; larger ones get 413."""
    shutdown_grace_seconds: float = Field(default=25.0, ge=0, le=3600)
    """On SIGTERM, how long in-flight requests may take to finish; those still in flight then
    get a 503 `shutting_down` (streams are cut), all within this time."""
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    """Time a connection has to send a request's line and headers, from when it opens or the
    request's first byte; after it the connection is answered 408 and closed (slowloris)."""
    body_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Time a request's body may take to arrive, once its headers have; then 408 and closed."""
    max_header_bytes: int = Field(default=32768, ge=1024, le=1048576)
    """Largest request line and headers accepted; larger ones get 431 and the connection closed."""


class UpstreamConfig(UpstreamSettings):
    """The upstream, with its API key taken from the environment."""

    api_key_env: str | None = Field(default=None, pattern=ENV_NAME)
    """Environment variable holding the upstream API key; when unset, callers' `Authorization`
    headers are forwarded."""


class RedisConfig(RedisSettings):
    """Redis, with its URL taken from the environment."""

    url_env: str = Field(default="REDIS_URL", pattern=ENV_NAME)
    """Environment variable holding the Redis URL: `redis://…` or `rediss://…` (one node, or
    any node of a cluster with `cluster: true`), or
    `redis+sentinel://[:password@]host:port[,host:port…]/master[/db]` (the primary its Sentinels
    name)."""


class CacheConfig(CacheSettings):
    """Response caching, with the Redis URL taken from the environment."""

    redis: RedisConfig = Field(default_factory=RedisConfig)
    """Redis connection, for the `redis` and `tiered` backends."""


class LLMConfig(LLMSettings):
    """The `llm` section: one OpenAI-compatible upstream and how to treat it."""

    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    """The upstream API."""
    cache: CacheConfig = Field(default_factory=CacheConfig)
    """Response caching."""


class MCPServerConfig(MCPServerSettings):
    """One upstream MCP server, with its secret headers taken from the environment."""

    headers_env_prefix: str | None = Field(default=None, pattern=ENV_NAME)
    """Environment variables starting with this prefix become headers sent to the server."""


class ToolCacheConfig(ToolCacheSettings):
    """Where tool lists and results are cached, with the Redis URL taken from the environment."""

    redis: RedisConfig = Field(default_factory=RedisConfig)
    """Redis connection, for the `redis` and `tiered` backends."""


class MCPConfig(MCPSettings):
    """The `mcp` section: MCP servers behind one endpoint."""

    servers: list[MCPServerConfig] = Field(min_length=1, max_length=64)
    """The servers aggregated at `/mcp`; names are unique."""
    cache: ToolCacheConfig = Field(default_factory=ToolCacheConfig)
    """Where tool lists and results are cached."""

    @model_validator(mode="after")
    def _unique_names(self) -> MCPConfig:
        check_unique_servers(self.servers)
        return self


class Admin(Model):
    """The admin API (cache invalidation), on its own port and behind a token."""

    host: str | None = None
    """Address the admin API binds. Unset: `listen.host` inside a Kubernetes pod (the
    operator's NetworkPolicy guards it there), `127.0.0.1` anywhere else."""
    port: int = Field(default=8081, ge=1, le=65535)
    """Port of the admin API; never exposed by the Service the operator makes."""
    token_env: str | None = Field(default=None, pattern=ENV_NAME)
    """Environment variable holding the bearer token every admin call needs. Unset: the admin
    API refuses every call (403), since all of them delete cached data."""


class ProxyConfig(Model):
    """A whole proxy: either section may be absent; a proxy serves what its config names."""

    listen: Listen = Field(default_factory=Listen)
    """Where the proxy serves."""
    llm: LLMConfig | None = None
    """The OpenAI-compatible upstream, if any."""
    mcp: MCPConfig | None = None
    """The MCP servers, if any."""
    admin: Admin = Field(default_factory=Admin)
    """The admin API."""


def read(path: pathlib.Path) -> dict[str, Any]:
    """Read a YAML config file as a mapping; raise `ConfigError` when it is not one."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load(path: pathlib.Path) -> ProxyConfig:
    """Read and validate a YAML config file."""
    return parse(read(path), source=str(path))


def parse(raw: Any, source: str = "config") -> ProxyConfig:
    """Validate a mapping into a `ProxyConfig`; raise `ConfigError` naming the first bad field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return ProxyConfig.model_validate(raw)
    except pydantic.ValidationError as e:
        raise ConfigError(f"{source}: {describe(e)}") from None


def describe(error: pydantic.ValidationError) -> str:
    """The first validation error as `field.path: message` (more errors are counted, not listed)."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = error.error_count() - 1
    suffix = f" (and {more} more)" if more else ""
    return f"{field}: {first['msg']}{suffix}"
