"""The upstream session pool against a real loopback server: connection limits and the idle cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from sluice.api import PoolSettings, UpstreamSettings
from sluice.proxy.llm import client

pytestmark = pytest.mark.integration


@pytest.fixture
async def slow_server() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/v1/ping", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    await runner.cleanup()


async def test_connections_are_capped_and_idle_ones_trimmed(slow_server: str) -> None:
    pool = PoolSettings(clients=2, max_connections=8, max_keepalive_connections=2)
    pooled = client.Upstream(UpstreamSettings(url=slow_server), pool, api_key=None)
    await pooled.start()
    peak = 0

    async def one() -> None:
        nonlocal peak
        call = await pooled.send("other", "GET", "/ping", {}, b"")
        peak = max(peak, sum(c.in_use_count() for c in pooled.sessions.connectors()))
        await call.read(1)

    try:
        await asyncio.gather(*(one() for _ in range(40)))
        connectors = pooled.sessions.connectors()
        assert peak <= 8
        assert [c.in_use_count() for c in connectors] == [0, 0]
        # 8 connections were open at the peak; only 1 per client (2 in all) stays idle.
        assert [c.idle_count() for c in connectors] == [1, 1]
    finally:
        await pooled.close()


async def test_requests_beyond_the_limit_wait_for_a_connection(slow_server: str) -> None:
    pool = PoolSettings(clients=1, max_connections=2, max_keepalive_connections=2)
    pooled = client.Upstream(UpstreamSettings(url=slow_server), pool, api_key=None)
    await pooled.start()
    try:
        calls = [
            asyncio.create_task(pooled.send("other", "GET", "/ping", {}, b"")) for _ in range(5)
        ]
        await asyncio.sleep(0.02)
        assert pooled.sessions.connectors()[0].waiting_count() == 3
        for call in await asyncio.gather(*calls):
            await call.read(1)
    finally:
        await pooled.close()
