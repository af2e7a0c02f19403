"""Cached tool results, for the tools a policy names in `toolResults` (a glob over qualified
names, with a TTL each) and for no other: annotations such as `readOnlyHint` come from servers
the proxy does not trust, so they are never enough on their own (FACTS.md).

The key holds the server, the tool, the arguments in canonical JSON (keys sorted) and the
caller's auth context, so two callers never share a result unless they are one auth context.
A result with `isError: true` is never stored, nor one that is not whole (`input_required`),
and a call that answers a server's request for input (`inputResponses`, `requestState`) is
never answered from the cache.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import struct
from typing import Any

import orjson

from sluice.api import MCPConfig
from sluice.proxy import metrics
from sluice.proxy.cache import keyspace, store

KIND = "tool_results"


class Results:
    """The tool-result cache."""

    def __init__(self, config: MCPConfig, backend: store.Cache) -> None:
        self.rules = [(rule.tool, float(rule.ttl_seconds)) for rule in config.tool_results]
        self.store = backend
        self.prefix = config.cache.redis.key_prefix
        self._counters = {
            result: metrics.cache_requests.labels(KIND, result)
            for result in ("hit", "miss", "bypass")
        }

    def ttl(self, qualified: str) -> float | None:
        """The TTL of the first rule matching the tool's qualified name; None: not cached."""
        for pattern, ttl in self.rules:
            if fnmatch.fnmatchcase(qualified, pattern):
                return ttl
        return None

    def key(self, server: str, tool: str, arguments: Any, context: str) -> str:
        material = orjson.dumps([tool, arguments], option=orjson.OPT_SORT_KEYS)
        digest = hashlib.blake2b(material, digest_size=16).hexdigest()
        return keyspace.layout(self.prefix, KIND, context, server, digest)

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            value = await self.store.get(key)
        except store.UnavailableError:
            self._counters["bypass"].inc()
            return None
        if value is None:
            self._counters["miss"].inc()
            return None
        try:
            found = orjson.loads(store.unpack(value)[2])
        except (ValueError, struct.error):
            found = None  # not a value this gateway wrote (another writer under the prefix)
        if not isinstance(found, dict):
            self._counters["miss"].inc()
            return None
        self._counters["hit"].inc()
        return found

    async def put(self, key: str, result: dict[str, Any], ttl: float, now: float) -> None:
        value = store.pack(now, 0, orjson.dumps(result))
        with contextlib.suppress(store.UnavailableError):  # counted and logged by the backend
            await self.store.set(key, value, ttl)

    def __repr__(self) -> str:
        return f"<Results rules={len(self.rules)} store={self.store!r}>"


def cacheable_call(params: dict[str, Any]) -> bool:
    """A call that is not a round of an input exchange, whose answer depends on more than
    the tool and its arguments."""
    return "inputResponses" not in params and "requestState" not in params


def complete(result: dict[str, Any]) -> bool:
    return result.get("isError") is not True and result.get("resultType", "complete") == "complete"
