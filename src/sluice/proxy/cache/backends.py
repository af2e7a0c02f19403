"""The cache backend a config names (the LLM routes' or the MCP gateway's), built but not
started (`app.ProxyApp` starts it)."""

from __future__ import annotations

from collections.abc import Mapping

from sluice.api import CacheConfig, ToolCacheConfig
from sluice.proxy.cache import memory, store, tiered


def build(config: CacheConfig | ToolCacheConfig, environ: Mapping[str, str]) -> store.Cache:
    """The backend the config names, not yet started."""
    prefix = config.redis.key_prefix
    local = memory.MemoryCache(config.max_entries, config.max_bytes, prefix)
    if config.backend == "memory":
        return local
    # Imported here: a proxy without Redis does not pay for importing redis.asyncio.
    from sluice.proxy.cache import rediscache

    remote = rediscache.RedisCache.from_config(config.redis, environ)
    if config.backend == "redis":
        return remote
    return tiered.TieredCache(local, remote, config.local_ttl_seconds)
