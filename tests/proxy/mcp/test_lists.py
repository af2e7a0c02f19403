"""The per-server list cache over fake servers: hits, scopes, staleness, pages, invalidation."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from sluice.api import MCPConfig
from sluice.proxy.cache import memory
from sluice.proxy.mcp import catalog, connection, lists


class Server:
    """A fake upstream: answers tools/list from `pages`, counts calls, can fail."""

    def __init__(self, name: str, *pages: dict[str, Any]) -> None:
        self.name = name
        self.pages = list(pages) or [{"tools": [{"name": "t"}]}]
        self.calls: list[tuple[dict[str, Any], Mapping[str, str] | None]] = []
        self.down = False

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        on_progress: Any = None,
    ) -> dict[str, Any]:
        self.calls.append((params, headers))
        if self.down:
            raise connection.UnavailableError("down")
        index = int(params.get("cursor", 0))
        page = dict(self.pages[index])
        if index + 1 < len(self.pages):
            page["nextCursor"] = str(index + 1)
        return page


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(*servers: Server, forward: bool = False, **settings: Any) -> tuple[lists.Lists, Clock]:
    config = MCPConfig.model_validate(
        {
            "servers": [
                {"name": s.name, "url": "http://x/mcp", "forwardCallerAuth": forward}
                for s in servers
            ],
            **settings,
        }
    )
    clock = Clock()
    backend = memory.MemoryCache(1000, 10_000_000, "sluice:", clock=clock)
    return lists.Lists(config, backend, {s.name: s for s in servers}, clock=clock), clock


async def get(
    cache: lists.Lists, server: str, kind: catalog.Kind, caller: lists.Caller
) -> list[catalog.Item] | None:
    return (await cache.get_all([server], kind, caller))[0]


ALICE = lists.Caller("alice-context", "Bearer alice")
BOB = lists.Caller("bob-context", "Bearer bob")


async def test_a_warm_list_reaches_no_server_until_its_ttl_ends() -> None:
    server = Server("s")
    cache, clock = make(server, toolsListTtlSeconds=60)
    assert await get(cache, "s", catalog.TOOLS, ALICE) == [{"name": "t"}]
    assert await get(cache, "s", catalog.TOOLS, BOB) == [{"name": "t"}]  # shared: not private
    assert len(server.calls) == 1
    clock.now += 61
    await get(cache, "s", catalog.TOOLS, ALICE)
    assert len(server.calls) == 2


async def test_ttl_ms_shortens_the_ttl() -> None:
    server = Server("s", {"tools": [{"name": "t"}], "ttlMs": 5000})
    cache, clock = make(server, toolsListTtlSeconds=60)
    await get(cache, "s", catalog.TOOLS, ALICE)
    clock.now += 6
    await get(cache, "s", catalog.TOOLS, ALICE)
    assert len(server.calls) == 2


async def test_private_lists_are_kept_per_auth_context() -> None:
    server = Server("s", {"tools": [{"name": "t"}], "cacheScope": "private"})
    cache, _ = make(server)
    await get(cache, "s", catalog.TOOLS, ALICE)
    await get(cache, "s", catalog.TOOLS, ALICE)
    await get(cache, "s", catalog.TOOLS, BOB)
    assert len(server.calls) == 2


async def test_with_forward_caller_auth_each_caller_fetches_with_its_own_token() -> None:
    server = Server("s", {"tools": [{"name": "t"}], "cacheScope": "public"})
    cache, _ = make(server, forward=True)
    await get(cache, "s", catalog.TOOLS, ALICE)
    await get(cache, "s", catalog.TOOLS, BOB)
    await get(cache, "s", catalog.TOOLS, BOB)
    assert [headers for _, headers in server.calls] == [
        {"authorization": "Bearer alice"},
        {"authorization": "Bearer bob"},
    ]


async def test_without_forward_caller_auth_no_caller_token_is_sent() -> None:
    server = Server("s")
    cache, _ = make(server)
    await get(cache, "s", catalog.TOOLS, ALICE)
    assert server.calls[0][1] == {}


async def test_a_server_that_fails_has_its_last_good_list_served_stale_or_none_at_all() -> None:
    server = Server("s")
    cache, clock = make(server, toolsListTtlSeconds=10)
    await get(cache, "s", catalog.TOOLS, ALICE)
    clock.now += 11
    server.down = True
    assert await get(cache, "s", catalog.TOOLS, ALICE) == [{"name": "t"}]
    dead = Server("dead")
    dead.down = True
    assert await get(make(dead)[0], "dead", catalog.TOOLS, ALICE) is None


async def test_every_page_is_followed_and_the_bound_on_pages_holds() -> None:
    pages = [{"tools": [{"name": f"t{i}"}]} for i in range(3)]
    cache, _ = make(Server("s", *pages))
    assert [t["name"] for t in await get(cache, "s", catalog.TOOLS, ALICE) or []] == [
        "t0",
        "t1",
        "t2",
    ]
    bounded, _ = make(Server("s", *pages), limits={"maxListPages": 2})
    assert await get(bounded, "s", catalog.TOOLS, ALICE) is None


async def test_more_items_than_the_limit_is_refused_as_hostile() -> None:
    many = {"tools": [{"name": f"t{i}"} for i in range(50)]}
    cache, _ = make(Server("s", many), limits={"maxListItems": 10})
    assert await get(cache, "s", catalog.TOOLS, ALICE) is None


async def test_invalidation_drops_one_servers_lists_only() -> None:
    a, b = Server("a"), Server("b")
    cache, _ = make(a, b)
    for name in ("a", "b"):
        await get(cache, name, catalog.TOOLS, ALICE)
    assert await cache.invalidate("a") == 1
    for name in ("a", "b"):
        await get(cache, name, catalog.TOOLS, ALICE)
    assert (len(a.calls), len(b.calls)) == (2, 1)


async def test_lists_read_lately_are_due_for_refresh_shortly_before_they_go_stale() -> None:
    server = Server("s")
    cache, clock = make(server, toolsListTtlSeconds=100)
    await get(cache, "s", catalog.TOOLS, ALICE)
    assert cache.refresh_due(clock.now) == []
    assert [r.server for r in cache.refresh_due(clock.now + 96)] == ["s"]
    assert cache.refresh_due(clock.now + 200) == []  # nobody read it for a TTL: let it go


async def test_ttl_zero_turns_caching_off() -> None:
    server = Server("s")
    cache, _ = make(server, toolsListTtlSeconds=0)
    await get(cache, "s", catalog.TOOLS, ALICE)
    await get(cache, "s", catalog.TOOLS, ALICE)
    assert len(server.calls) == 2


@pytest.mark.parametrize("kind", [catalog.PROMPTS, catalog.RESOURCES])
async def test_other_lists_are_cached_by_the_same_mechanism(kind: catalog.Kind) -> None:
    server = Server("s", {kind.field: [{"name": "p", "uri": "x://p"}]})
    cache, _ = make(server)
    await get(cache, "s", kind, ALICE)
    await get(cache, "s", kind, ALICE)
    assert len(server.calls) == 1


async def test_an_invalidation_while_a_fetch_is_under_way_keeps_nothing_of_that_fetch() -> None:
    server = Server("s")
    gate = asyncio.Event()
    answer = server.request

    async def held(method: str, params: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        await gate.wait()
        return await answer(method, params, **kwargs)

    server.request = held  # type: ignore[method-assign]
    cache, _ = make(server)
    first = asyncio.create_task(get(cache, "s", catalog.TOOLS, ALICE))
    await asyncio.sleep(0)
    await cache.invalidate("s")
    server.pages = [{"tools": [{"name": "new"}]}]
    later = asyncio.create_task(get(cache, "s", catalog.TOOLS, ALICE))  # a new flight
    await asyncio.sleep(0)
    gate.set()
    await first
    assert await later == [{"name": "new"}]
    assert await get(cache, "s", catalog.TOOLS, ALICE) == [{"name": "new"}]


async def test_callers_of_a_shared_list_share_its_fetch_and_its_refresh() -> None:
    server = Server("s")
    cache, clock = make(server, toolsListTtlSeconds=100)
    callers = [lists.Caller(f"junk-{i}", f"Bearer junk-{i}") for i in range(50)]
    await asyncio.gather(*(get(cache, "s", catalog.TOOLS, c) for c in callers))
    assert len(server.calls) == 1
    assert len(cache.refresh_due(clock.now + 99)) == 1
