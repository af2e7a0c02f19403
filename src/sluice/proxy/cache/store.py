"""What every cache backend offers (`Cache`), how it fails (`UnavailableError`), and the
small header stored values carry (`pack`/`unpack`).

Values are opaque bytes with a TTL given per write, so one backend holds every kind of data
(chat, completions, embeddings, MCP tool lists and results, each with its own TTL). Keys follow
`keyspace.layout`. The backends are `memory.MemoryCache`, `rediscache.RedisCache` and
`tiered.TieredCache`; `backends.build` picks one from the config.

A backend that cannot answer raises `UnavailableError`; callers then bypass the cache for that
request (fail-open). Only Redis ever does; its circuit breaker and timeouts keep a dead Redis
from slowing requests down.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Protocol

from sluice.proxy.cache import keyspace

_HEADER = struct.Struct("<dB")

HAS_USAGE = 1
"""Header flag: the stored answer carries `usage` (see `llm/replay.py`)."""


class UnavailableError(Exception):
    """The backend cannot answer now (down, slow, or its circuit is open): bypass the cache."""


class Cache(Protocol):
    """What every backend offers; `ttl` is in seconds."""

    name: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def set(self, key: str, value: bytes, ttl: float) -> None: ...
    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None: ...
    async def invalidate(self, selection: keyspace.Selection) -> int:
        """Delete every entry `selection` matches; returns how many went."""
        ...


def pack(stored_at: float, flags: int, body: bytes) -> bytes:
    """A value with its header: wall-clock time stored (for `Age`) and flags."""
    return _HEADER.pack(stored_at, flags) + body


def unpack(value: bytes) -> tuple[float, int, bytes]:
    """(stored_at, flags, body) of a value written by `pack`."""
    stored_at, flags = _HEADER.unpack_from(value)
    return stored_at, flags, value[_HEADER.size :]
