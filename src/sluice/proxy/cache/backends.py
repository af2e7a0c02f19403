"""The cache backend a config names, built but not started (`app.ProxyApp` starts it)."""

from __future__ import annotations

from collections.abc import Mapping

from sluice.api import CacheConfig
from sluice.proxy.cache import memory, store, tiered


def build(config: CacheConfig, environ: Mapping[str, str]) -> store.Cache | None:
    """The backend the config names, not yet started; None when caching is off."""
    if config.mode == "off":
        return None
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
