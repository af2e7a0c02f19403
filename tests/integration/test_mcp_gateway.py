"""The MCP gateway end to end: real SDK servers behind a real `sluice proxy`, the official `mcp`
client in front, in both protocol eras; Redis shared by two replicas; hostile servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import mcp
import orjson
import pytest
from aiohttp import web
from mcp.shared.exceptions import MCPError

from tests.support.mcp import BridgedServer, McpServer
from tests.support.proxy import ProxyFactory, ProxyProcess, free_port
from tests.support.redis import RedisServer
from tests.support.toolservers import ToolServer

pytestmark = pytest.mark.integration

Servers = Callable[..., list[ToolServer]]
MODES = [pytest.param("legacy", id="legacy"), pytest.param("auto", id="auto")]
MODERN_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def gateway(
    start_proxy: ProxyFactory,
    servers: list[ToolServer],
    env: dict[str, str] | None = None,
    **mcp_settings: Any,
) -> ProxyProcess:
    section = {"servers": [{"name": s.name, "url": s.url} for s in servers], **mcp_settings}
    return start_proxy({"mcp": section, "admin": {"port": free_port()}}, env)


async def modern(
    proxy: ProxyProcess,
    method: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One stateless request, as the SDK sends it, with a raw HTTP client."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": method,
        "params": {**(params or {}), "_meta": META},
    }
    sent = {**MODERN_HEADERS, "mcp-method": method}
    if method == "tools/call":
        sent["mcp-name"] = body["params"]["name"]
    sent |= headers or {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy.base}/mcp", data=orjson.dumps(body), headers=sent) as r,
    ):
        return r.status, orjson.loads(await r.read())


async def tool_names(proxy: ProxyProcess) -> list[str]:
    _, answer = await modern(proxy, "tools/list")
    return [tool["name"] for tool in answer["result"]["tools"]]


@pytest.mark.parametrize("mode", MODES)
async def test_the_official_client_lists_and_calls_every_servers_tools_by_qualified_name(
    start_proxy: ProxyFactory, tool_servers: Servers, mode: str
) -> None:
    a, b = tool_servers("alpha", "beta:stateless")
    proxy = gateway(start_proxy, [a, b])
    async with mcp.Client(f"{proxy.base}/mcp", mode=mode) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"alpha.add", "alpha.whoami", "beta.add", "beta.whoami"} <= tools
        answered = await client.call_tool("beta.whoami", {})
        assert answered.content[0].text == "beta"  # type: ignore[union-attr]
        assert (await client.call_tool("alpha.add", {"a": 2, "b": 3})).content[0].text == "5"  # type: ignore[union-attr]
        prompts = [prompt.name for prompt in (await client.list_prompts()).prompts]
        assert sorted(prompts) == ["alpha.greet", "beta.greet"]
        greeting = await client.get_prompt("alpha.greet", {"who": "you"})
        assert "from alpha" in greeting.messages[0].content.text  # type: ignore[union-attr]
        uris = sorted(str(r.uri) for r in (await client.list_resources()).resources)
        assert uris == ["alpha://readme", "beta://readme"]
        read = await client.read_resource("beta://readme")
        assert read.contents[0].text == "readme of beta"  # type: ignore[union-attr]
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("gamma.add", {"a": 1, "b": 1})
        assert unknown.value.error.code == -32602


@pytest.mark.parametrize("mode", MODES)
async def test_progress_notifications_of_a_call_reach_the_caller(
    start_proxy: ProxyFactory, tool_servers: Servers, mode: str
) -> None:
    (a,) = tool_servers("alpha")
    proxy = gateway(start_proxy, [a])
    seen: list[float] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append(value)

    async with mcp.Client(f"{proxy.base}/mcp", mode=mode) as client:
        result = await client.call_tool(
            "alpha.slow_count", {"steps": 3}, progress_callback=progress
        )
    assert result.content[0].text == "counted to 3"  # type: ignore[union-attr]
    assert seen == [1, 2, 3]


async def test_a_session_the_server_forgot_is_made_again_and_the_call_answered(
    start_proxy: ProxyFactory, tool_servers: Servers
) -> None:
    (old,) = tool_servers("old:legacy")  # refuses discover: the gateway opens a session
    proxy = gateway(start_proxy, [old])
    _, answer = await modern(proxy, "tools/call", {"name": "old.whoami", "arguments": {}})
    assert answer["result"]["content"][0]["text"] == "old"
    old.control("mode", {"forget": True})
    _, answer = await modern(
        proxy, "tools/call", {"name": "old.add", "arguments": {"a": 1, "b": 1}}
    )
    assert answer["result"]["content"][0]["text"] == "2"
    assert old.count("initialize") == 2
    assert old.count("server/discover") >= 1


async def test_a_cold_list_asks_every_server_at_once_and_a_warm_one_asks_none(
    start_proxy: ProxyFactory, tool_servers: Servers
) -> None:
    servers = tool_servers("a", "b", "c")
    for server in servers:
        server.control("mode", {"delay_ms": 1500})
    proxy = gateway(start_proxy, servers)
    listing = asyncio.create_task(tool_names(proxy))
    await asyncio.sleep(0.5)  # well inside the first server's delay
    assert [s.count("tools/list") for s in servers] == [1, 1, 1]  # all asked, none answered
    assert len(await listing) == 3 * 4  # add, whoami, slow_count, fails
    for _ in range(5):
        await tool_names(proxy)
    assert [s.count("tools/list") for s in servers] == [1, 1, 1]
    assert proxy.metric("sluice_cache_requests_total", cache="tools_list", result="hit") >= 15


async def test_list_changed_refetches_only_that_server_and_reaches_listening_callers(
    start_proxy: ProxyFactory, tool_servers: Servers
) -> None:
    a, b = tool_servers("alpha", "beta")
    proxy = gateway(start_proxy, [a, b])
    await tool_names(proxy)
    async with aiohttp.ClientSession() as session:
        body = {
            "jsonrpc": "2.0",
            "id": "l1",
            "method": "subscriptions/listen",
            "params": {"notifications": {"toolsListChanged": True}, "_meta": META},
        }
        headers = {**MODERN_HEADERS, "mcp-method": "subscriptions/listen"}
        async with session.post(f"{proxy.base}/mcp", data=orjson.dumps(body), headers=headers) as r:
            assert r.status == 200
            first = await r.content.readuntil(b"\n\n")
            assert b"notifications/subscriptions/acknowledged" in first
            await eventually(lambda: counted(a, "subscriptions/listen", 1))
            a.control("change", {"tool": "brand_new"})
            forwarded = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 10)
            assert b"notifications/tools/list_changed" in forwarded
    assert "alpha.brand_new" in await tool_names(proxy)
    assert (a.count("tools/list"), b.count("tools/list")) == (2, 1)


async def test_a_second_replica_shares_lists_through_redis_and_both_hear_list_changed(
    start_proxy: ProxyFactory, tool_servers: Servers, redis_server: RedisServer
) -> None:
    (a,) = tool_servers("alpha")
    env = {"REDIS_URL": redis_server.url}
    cache = {"backend": "redis"}
    one = gateway(start_proxy, [a], env, cache=cache)
    two = gateway(start_proxy, [a], env, cache=cache)
    await tool_names(one)
    await tool_names(two)  # the list the first replica fetched, from Redis
    assert a.count("tools/list") == 1
    await eventually(lambda: counted(a, "subscriptions/listen", 2))
    a.control("change", {"tool": "brand_new"})
    for replica in (one, two):

        async def changed(replica: ProxyProcess = replica) -> bool:
            return "alpha.brand_new" in await tool_names(replica)

        await eventually(changed)


async def test_a_server_that_fails_is_served_stale_and_the_others_are_unaffected(
    start_proxy: ProxyFactory, tool_servers: Servers
) -> None:
    a, b = tool_servers("alpha", "beta")
    proxy = gateway(start_proxy, [a, b], toolsListTtlSeconds=1)
    before = await tool_names(proxy)
    a.control("mode", {"fail": True})
    await asyncio.sleep(1.5)
    assert await tool_names(proxy) == before
    assert proxy.metric("sluice_cache_requests_total", cache="tools_list", result="stale") >= 1
    assert proxy.metric("sluice_mcp_upstream_up", server="alpha") == 0
    assert proxy.metric("sluice_mcp_upstream_up", server="beta") == 1


async def test_a_server_down_from_the_start_leaves_the_others_answering(
    start_proxy: ProxyFactory, tool_servers: Servers
) -> None:
    a, b = tool_servers("alpha", "beta")
    a.control("mode", {"fail": True})
    proxy = gateway(start_proxy, [a, b])
    assert all(name.startswith("beta.") for name in await tool_names(proxy))


async def test_private_lists_are_never_shared_between_credentials(
    start_proxy: ProxyFactory, tool_servers: Servers
) -> None:
    (a,) = tool_servers("alpha")  # the SDK's servers mark their lists `cacheScope: private`
    proxy = gateway(start_proxy, [a])
    for token in ("alice", "bob", "alice"):
        await modern(proxy, "tools/list", headers={"authorization": f"Bearer {token}"})
    assert a.count("tools/list") == 2


async def test_only_allowlisted_tools_have_their_results_cached_and_never_errors(
    start_proxy: ProxyFactory, tool_servers: Servers
) -> None:
    (a,) = tool_servers("alpha")
    rules = [{"tool": "alpha.add", "ttlSeconds": 60}, {"tool": "alpha.fail*", "ttlSeconds": 60}]
    proxy = gateway(start_proxy, [a], toolResults=rules)
    for tool, arguments in [("alpha.add", {"a": 1, "b": 2})] * 3 + [("alpha.whoami", {})] * 2:
        _, answer = await modern(proxy, "tools/call", {"name": tool, "arguments": arguments})
        assert answer["result"]["isError"] is False
    for _ in range(2):
        _, answer = await modern(proxy, "tools/call", {"name": "alpha.fails", "arguments": {}})
        assert answer["result"]["isError"] is True
    assert a.count("tools/call") == 1 + 2 + 2
    assert (
        proxy.metric("sluice_tool_calls_total", server="alpha", tool="add", outcome="cached") == 2
    )
    assert (
        proxy.metric("sluice_tool_calls_total", server="alpha", tool="fails", outcome="error") == 2
    )


async def test_a_browser_origin_not_allowed_is_refused_and_an_allowed_one_served(
    start_proxy: ProxyFactory, tool_servers: Servers
) -> None:
    (a,) = tool_servers("alpha")
    proxy = gateway(start_proxy, [a], allowedOrigins=["https://app.example.com"])
    status, answer = await modern(proxy, "tools/list", headers={"origin": "https://evil.example"})
    assert status == 403
    assert answer["error"]["code"] == -32600
    status, _ = await modern(proxy, "tools/list", headers={"origin": "https://app.example.com"})
    assert status == 200


async def test_routing_headers_that_disagree_with_the_body_are_refused(
    start_proxy: ProxyFactory, tool_servers: Servers
) -> None:
    (a,) = tool_servers("alpha")
    proxy = gateway(start_proxy, [a])
    status, answer = await modern(
        proxy,
        "tools/call",
        {"name": "alpha.add", "arguments": {"a": 1, "b": 1}},
        headers={"mcp-name": "alpha.whoami"},
    )
    assert status == 400
    assert answer["error"]["code"] == -32020  # HEADER_MISMATCH
    assert "Mcp-Name" in answer["error"]["message"]


async def test_admin_invalidation_drops_one_servers_lists(
    start_proxy: ProxyFactory, tool_servers: Servers
) -> None:
    a, b = tool_servers("alpha", "beta")
    section = {"servers": [{"name": s.name, "url": s.url} for s in (a, b)]}
    proxy = start_proxy(
        {"mcp": section, "admin": {"port": free_port(), "tokenEnv": "ADMIN_TOKEN"}},
        {"ADMIN_TOKEN": "s3cret"},
    )
    await tool_names(proxy)
    admin = proxy.config["admin"]["port"]
    async with aiohttp.ClientSession(headers={"authorization": "Bearer s3cret"}) as session:
        url = f"http://127.0.0.1:{admin}/admin/mcp/invalidate"
        async with session.post(url, json={"server": "alpha"}) as r:
            assert r.status == 200
            assert (await r.json())["deleted"] >= 1
        async with session.post(url, json={"server": "nope"}) as r:
            assert r.status == 400
    await tool_names(proxy)
    assert (a.count("tools/list"), b.count("tools/list")) == (2, 1)


async def eventually(check: Callable[[], Awaitable[bool]], attempts: int = 200) -> None:
    """Return once `check()` holds; fail after `attempts` tries 50 ms apart."""
    for _ in range(attempts):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition did not come true")


async def counted(server: ToolServer, method: str, at_least: int) -> bool:
    return server.count(method) >= at_least


def hostile_app() -> web.Application:
    """Servers that answer discover like a modern server, then misbehave on tools/list."""

    def answer(id_: Any, result: dict[str, Any]) -> web.Response:
        return web.json_response({"jsonrpc": "2.0", "id": id_, "result": result})

    def route(misbehave: Callable[[web.Request, Any], Awaitable[web.StreamResponse]]) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            message = await request.json()
            method, id_ = message.get("method"), message.get("id")
            if method == "server/discover":
                return answer(id_, {"supportedVersions": ["2026-07-28"], "capabilities": {}})
            if method == "tools/list":
                return await misbehave(request, id_)
            return answer(id_, {})

        return handler

    async def many(request: web.Request, id_: Any) -> web.StreamResponse:
        tools = [{"name": f"t{i}", "inputSchema": {"type": "object"}} for i in range(50_000)]
        return answer(id_, {"tools": tools})

    async def huge(request: web.Request, id_: Any) -> web.StreamResponse:
        blob = "x" * (20 * 1024 * 1024)
        return answer(id_, {"tools": [{"name": "big", "description": blob}]})

    async def endless(request: web.Request, id_: Any) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await reply.prepare(request)
        with contextlib.suppress(ConnectionError):  # the proxy gives up and hangs up
            for _ in range(10_000):  # bounded all the same
                await reply.write(b": still thinking\n\n")
                await asyncio.sleep(0.05)
        return reply

    async def garbage(request: web.Request, id_: Any) -> web.StreamResponse:
        return web.Response(body=b"\x00<html>not json", content_type="application/json")

    app = web.Application(client_max_size=1024**2)
    for name, misbehave in [
        ("many", many),
        ("huge", huge),
        ("endless", endless),
        ("garbage", garbage),
    ]:
        app.router.add_post(f"/{name}/mcp", route(misbehave))
    return app


async def test_hostile_servers_leave_the_proxy_answering_the_others(
    start_proxy: ProxyFactory, tool_servers: Servers
) -> None:
    (good,) = tool_servers("alpha")
    runner = web.AppRunner(hostile_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        hostile = [
            {"name": name, "url": f"http://127.0.0.1:{port}/{name}/mcp", "timeoutSeconds": 2}
            for name in ("many", "huge", "endless", "garbage")
        ]
        section = {"servers": [{"name": "alpha", "url": good.url}, *hostile]}
        proxy = start_proxy({"mcp": section, "admin": {"port": free_port()}})
        names = await tool_names(proxy)
        assert names
        assert all(name.startswith("alpha.") for name in names)
        assert await tool_names(proxy) == names
        assert proxy.get("/healthz")[0] == 200
        for name in ("many", "huge", "endless", "garbage"):
            assert proxy.metric("sluice_mcp_upstream_up", server=name) == 0
        assert proxy.metric("sluice_mcp_upstream_up", server="alpha") == 1
        assert proxy.metric("process_resident_memory_bytes") < 512 * 1024 * 1024
    finally:
        await runner.cleanup()


# --- third-party servers, and a server whose list changes on demand -----------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_third_party_servers_from_pypi_are_served_through_the_gateway(
    start_proxy: ProxyFactory, mcp_time: BridgedServer, mcp_fast: McpServer, mode: str
) -> None:
    """mcp-server-time behind mcp-proxy (mcp 1.x: the handshake only) and a fastmcp server."""
    section = {
        "servers": [{"name": "time", "url": mcp_time.url}, {"name": "fast", "url": mcp_fast.url}]
    }
    proxy = start_proxy({"mcp": section, "admin": {"port": free_port()}})
    async with mcp.Client(f"{proxy.base}/mcp", mode=mode) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"time.get_current_time", "time.convert_time", "fast.echo", "fast.add"} <= tools
        now = await client.call_tool("time.get_current_time", {"timezone": "UTC"})
        assert not now.is_error, now.content
        assert orjson.loads(now.content[0].text)["timezone"] == "UTC"  # type: ignore[union-attr]
        echoed = await client.call_tool("fast.echo", {"text": "through sluice"})
        assert echoed.content[0].text == "through sluice"  # type: ignore[union-attr]
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert "fast.summarize" in prompts


async def test_a_changing_servers_list_changed_refetches_it_once(
    start_proxy: ProxyFactory, mcp_changing: McpServer
) -> None:
    section = {"servers": [{"name": "c", "url": mcp_changing.url}]}
    proxy = start_proxy({"mcp": section, "admin": {"port": free_port()}})
    before = await tool_names(proxy)
    listed = mcp_changing.count("tools/list")

    async def listening() -> bool:
        return (
            mcp_changing.count("http:GET") >= 1 or mcp_changing.count("subscriptions/listen") >= 1
        )

    await eventually(listening)
    mcp_changing.control("tools", {"add": ["fresh_tool"]})

    async def changed() -> bool:
        return "c.fresh_tool" in await tool_names(proxy)

    await eventually(changed)
    assert set(before) < set(await tool_names(proxy))
    assert mcp_changing.count("tools/list") == listed + 1


async def test_list_changed_on_a_sessions_get_stream_refetches_that_server(
    start_proxy: ProxyFactory, mcp_changing_handshake: McpServer
) -> None:
    server = mcp_changing_handshake  # refuses discover: the gateway opens a session and a GET
    proxy = start_proxy(
        {"mcp": {"servers": [{"name": "old", "url": server.url}]}, "admin": {"port": free_port()}}
    )
    await tool_names(proxy)
    listed = server.count("tools/list")

    async def listening() -> bool:
        return server.count("http:GET") >= 1

    await eventually(listening)
    server.control("tools", {"add": ["fresh_tool"]})

    async def changed() -> bool:
        return "old.fresh_tool" in await tool_names(proxy)

    await eventually(changed)
    assert server.count("tools/list") == listed + 1
    assert server.count("initialize") == 1


async def test_redirects_are_not_followed_nor_do_forgetful_or_odd_servers_break_the_rest(
    start_proxy: ProxyFactory, tool_servers: Servers
) -> None:
    """Review findings: a redirect would carry the server's secret headers anywhere; a server
    that forgets every session at once, and names with control characters, were 500s."""
    (good,) = tool_servers("alpha")
    sunk: list[str] = []

    async def redirecting(request: web.Request) -> web.StreamResponse:
        message = await request.json()
        if message.get("method") == "server/discover":
            result = {"supportedVersions": ["2026-07-28"], "capabilities": {}}
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})
        raise web.HTTPTemporaryRedirect("/sink")

    async def sink(request: web.Request) -> web.StreamResponse:
        sunk.append(request.headers.get("x-api-key", ""))
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}})

    async def amnesiac(request: web.Request) -> web.StreamResponse:
        message = await request.json()
        if request.headers.get("mcp-protocol-version") == "2026-07-28":
            return web.json_response({"error": "handshake only"}, status=400)
        if message.get("method") == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {}}
            body = {"jsonrpc": "2.0", "id": message["id"], "result": result}
            return web.json_response(body, headers={"mcp-session-id": "s-1"})
        return web.json_response({"error": "Session not found"}, status=404)

    app = web.Application()
    app.router.add_post("/redirect/mcp", redirecting)
    app.router.add_route("*", "/sink", sink)
    app.router.add_post("/amnesiac/mcp", amnesiac)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        servers = [
            {"name": "alpha", "url": good.url},
            {"name": "redirect", "url": f"http://127.0.0.1:{port}/redirect/mcp",
             "headersEnvPrefix": "REDIRECT_"},
            {"name": "amnesiac", "url": f"http://127.0.0.1:{port}/amnesiac/mcp"},
        ]  # fmt: skip
        proxy = start_proxy(
            {"mcp": {"servers": servers}, "admin": {"port": free_port()}},
            env={"REDIRECT_X_Api_Key": "secret-key"},
        )
        names = await tool_names(proxy)
        assert names
        assert all(name.startswith("alpha.") for name in names)
        assert sunk == []
        status, answer = await modern(
            proxy, "tools/call", {"name": "amnesiac.anything", "arguments": {}}
        )
        assert (status, answer["error"]["code"]) == (200, -32603)
        for evil in ("alpha.add\r\nX-Evil: 1", "alpha.add\n"):
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": evil, "arguments": {}, "_meta": META}}  # fmt: skip
            headers = {**MODERN_HEADERS, "mcp-method": "tools/call"}
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"{proxy.base}/mcp", data=orjson.dumps(body), headers=headers) as r,
            ):
                assert r.status == 400
                assert (await r.json())["error"]["code"] in (-32602, -32020)
    finally:
        await runner.cleanup()


async def test_a_caller_that_hangs_up_cancels_its_call_on_the_server(
    start_proxy: ProxyFactory, mcp_normal: McpServer
) -> None:
    proxy = start_proxy(
        {"mcp": {"servers": [{"name": "n", "url": mcp_normal.url}]}, "admin": {"port": free_port()}}
    )
    await tool_names(proxy)
    call = asyncio.create_task(
        modern(proxy, "tools/call", {"name": "n.sleep", "arguments": {"seconds": 30}})
    )

    async def sleeping() -> bool:
        return mcp_normal.count("tools/call") >= 1

    await eventually(sleeping)
    call.cancel()  # the caller's connection closes

    async def cancelled() -> bool:
        return mcp_normal.count("cancelled/sleep") >= 1

    await eventually(cancelled)
