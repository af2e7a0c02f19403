"""Upstream client sessions: a fixed set of aiohttp sessions used round-robin, each with its own
connection limit, keep-alive expiry and a cap on idle connections (DESIGN.md §4: aiohttp in the
hot path). Shared by the LLM upstream client and the MCP gateway's upstream servers; the
sampler (`sampler.py`) reads the connectors' counts for the pool gauges.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import aiohttp

from sluice.api import PoolSettings


class KeepaliveCappedConnector(aiohttp.TCPConnector):
    """A connector that keeps at most `max_idle` idle connections; aiohttp has no such limit.

    It hooks `_release`, aiohttp's private return-to-pool step (stable since 3.x; covered by
    tests/integration/test_upstream.py so an upgrade that changes it fails loudly).
    """

    def __init__(self, *, max_idle: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_idle = max_idle

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        if self.idle_count() >= self.max_idle:
            should_close = True
        super()._release(key, protocol, should_close=should_close)

    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._conns.values())

    def in_use_count(self) -> int:
        return len(self._acquired)

    def waiting_count(self) -> int:
        return sum(len(waiters) for waiters in self._waiters.values())


class SessionPool:
    """`pool.clients` sessions sharing `pool.maxConnections` and `maxKeepaliveConnections`."""

    def __init__(
        self,
        name: str,
        pool: PoolSettings,
        *,
        connect_timeout: float,
        read_timeout: float | None,
    ) -> None:
        self.name = name
        """The `pool` label of the pool gauges (`llm`, `mcp`)."""
        self.settings = pool
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self.sessions: list[aiohttp.ClientSession] = []
        self._turn = itertools.count()

    async def start(self) -> None:
        """Open the sessions; must run on the serving event loop."""
        pool = self.settings
        per_client = math.ceil(pool.max_connections / pool.clients)
        idle = min(pool.max_keepalive_connections, pool.max_connections)
        idle_per_client = math.ceil(idle / pool.clients)
        keepalive = pool.keepalive_expiry_seconds
        for _ in range(pool.clients):
            connector = KeepaliveCappedConnector(
                max_idle=idle_per_client,
                limit=per_client,
                limit_per_host=0,
                keepalive_timeout=keepalive if keepalive > 0 else None,
                force_close=keepalive == 0,
                ttl_dns_cache=60,
            )
            session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, skip_auto_headers=("User-Agent",)
            )
            self.sessions.append(session)

    def next(self) -> aiohttp.ClientSession:
        """The session whose turn it is."""
        return self.sessions[next(self._turn) % len(self.sessions)]

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.sessions))
        self.sessions.clear()

    def connectors(self) -> list[KeepaliveCappedConnector]:
        return [s.connector for s in self.sessions]  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"<SessionPool {self.name} clients={len(self.sessions)}>"
