"""Where cached data lives, for either half of the proxy: memory, Redis, or both (no secrets here).

`CacheSettings` (LLM answers, `llm.py`) and the MCP gateway's `ToolCacheSettings` (`mcp.py`) add
what they cache and for how long; the config and the CRDs add where Redis is.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sluice.api.base import Model


class RedisSettings(Model):
    """How the proxy talks to Redis; where Redis is comes from a secret (config or CRD side)."""

    pool_size: int = Field(default=32, ge=1, le=4096)
    """Connections in the Redis connection pool (on a cluster: to each node), and so the Redis
    commands in flight at once; more wait, within `timeoutMilliseconds`."""
    timeout_milliseconds: int = Field(default=50, ge=1, le=60000)
    """Time allowed for one Redis operation before the cache is bypassed for that request."""
    key_prefix: str = Field(default="sluice:", max_length=64)
    """Prefix of every key the proxy writes, so one Redis can serve several policies."""
    cluster: bool = False
    """The URL names one node of a Redis Cluster (`redis://` or `rediss://`, database 0): the
    proxy learns the others from it and spreads the keys over every primary. A Sentinel-watched
    primary needs no flag: its URL says so (`redis+sentinel://…`)."""


class StoreSettings(Model):
    """Which backend holds the entries, and how much of them memory holds."""

    backend: Literal["memory", "redis", "tiered"] = "memory"
    """`memory` (in the proxy), `redis` (shared by replicas) or `tiered` (memory before Redis)."""
    max_entries: int = Field(default=100000, ge=1, le=100000000)
    """Entries held in memory; the least recently used go first."""
    max_bytes: int = Field(default=268435456, ge=1024, le=1099511627776)
    """Bytes held in memory; the least recently used entries go first."""
    local_ttl_seconds: int = Field(default=5, ge=1, le=3600)
    """For `tiered`: how long an entry read from Redis is kept in memory (and so how long another
    replica's invalidation may take to reach this one)."""
