"""The test MCP servers, driven by the official ``mcp.Client`` in both of its modes.

These pin down what the gateway's tests will rely on: each server lists, calls and notifies as
documented, counts what reaches it, and misbehaves exactly as advertised. ``mode="legacy"``
forces the initialize handshake (sessions, 2025-11-25); ``mode="auto"`` probes
``server/discover`` and, against the SDK's own servers, ends up on 2026-07-28.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from mcp import Client
from mcp.client.session import IncomingMessage
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    REQUEST_TIMEOUT,
    TextContent,
    ToolListChangedNotification,
)

from tests.support.mcp import BridgedServer, McpServer

pytestmark = pytest.mark.integration

MODES = [pytest.param("legacy", id="legacy"), pytest.param("auto", id="auto")]
HANG_GUARD_SECONDS = 20.0
"""Only a guard against hanging: every wait below normally ends in milliseconds."""
NOTIFY_RETRY_SECONDS = 0.5


def text_of(content: list[Any]) -> str:
    first = content[0]
    assert isinstance(first, TextContent)
    return first.text


@pytest.mark.parametrize("mode", MODES)
async def test_normal_server_lists_calls_and_counts_each_method(
    mcp_normal: McpServer, mode: str
) -> None:
    async with Client(mcp_normal.url, mode=mode) as client:
        tools = await client.list_tools()
        added = await client.call_tool("add", {"a": 2, "b": 3})
        multiplied = await client.call_tool("math.mul", {"a": 4, "b": 5})
        prompts = await client.list_prompts()
        prompt = await client.get_prompt("greet", {"who": "Ada"})
        resources = await client.list_resources()
        readme = await client.read_resource("res://normal/readme")
        item = await client.read_resource("res://normal/items/42")

    assert {tool.name for tool in tools.tools} == {"add", "echo", "math.mul", "progress", "sleep"}
    assert added.structured_content == {"result": 5}
    assert multiplied.structured_content == {"result": 20}
    assert [p.name for p in prompts.prompts] == ["greet"]
    assert "Hello, Ada!" in json.dumps(prompt.model_dump(mode="json"))
    assert [str(r.uri) for r in resources.resources] == ["res://normal/readme"]
    assert "a test MCP server" in json.dumps(readme.model_dump(mode="json"))
    assert "item 42" in json.dumps(item.model_dump(mode="json"))
    calls = mcp_normal.calls()
    assert calls["tools/list"] == 1  # the calls found their tools in the listing already made
    assert calls["tools/call"] == 2
    handshake = {"initialize": 1} if mode == "legacy" else {"server/discover": 1}
    assert {key: calls.get(key, 0) for key in handshake} == handshake


@pytest.mark.parametrize(
    ("mode", "version"),
    [
        pytest.param("legacy", "2025-11-25", id="legacy"),
        pytest.param("auto", "2026-07-28", id="auto"),
    ],
)
@pytest.mark.parametrize("server", ["mcp_normal", "mcp_stateless", "mcp_fast"])
async def test_sdk_servers_speak_the_revision_each_mode_asks_for(
    server: str, mode: str, version: str, request: pytest.FixtureRequest
) -> None:
    target: McpServer = request.getfixturevalue(server)
    async with Client(target.url, mode=mode) as client:
        assert client.protocol_version == version
        echoed = await client.call_tool("echo", {"text": "hi"})
    assert text_of(echoed.content) == "hi"


@pytest.mark.parametrize("mode", MODES)
async def test_progress_notifications_reach_the_callers_callback(
    mcp_normal: McpServer, mode: str
) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(mcp_normal.url, mode=mode) as client:
        result = await client.call_tool("progress", {"steps": 3}, progress_callback=on_progress)

    assert text_of(result.content) == "done after 3 steps"
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


@pytest.mark.parametrize("mode", MODES)
async def test_a_timed_out_call_is_cancelled_on_the_server(
    mcp_normal: McpServer, mode: str
) -> None:
    async with Client(mcp_normal.url, mode=mode) as client:
        await client.list_tools()
        with pytest.raises(MCPError) as raised:
            await client.call_tool("sleep", {"seconds": 60}, read_timeout_seconds=0.5)
        assert raised.value.error.code == REQUEST_TIMEOUT
        # Handshake era: a notifications/cancelled; 2026: the POST is closed. Either ends the sleep.
        await wait_for(lambda: mcp_normal.count("cancelled/sleep") == 1)


async def test_a_forgotten_session_answers_404_and_a_new_client_gets_a_new_one(
    mcp_normal: McpServer,
) -> None:
    async with Client(mcp_normal.url, mode="legacy") as client:
        await client.list_tools()
        assert mcp_normal.control("forget-sessions")["forgotten"] >= 1
        with pytest.raises(MCPError) as raised:
            await client.list_tools(cache_mode="bypass")
    # The SDK client does not re-initialise by itself: it reports the server's 404 body.
    assert raised.value.error.code == INVALID_REQUEST
    assert raised.value.error.message == "Session not found"
    async with Client(mcp_normal.url, mode="legacy") as fresh_client:
        assert len((await fresh_client.list_tools()).tools) == 5
    assert mcp_normal.count("initialize") == 2


@pytest.mark.parametrize("mode", MODES)
async def test_slow_server_holds_tools_list_past_a_short_read_timeout(
    mcp_slow: McpServer, mode: str
) -> None:
    mcp_slow.control("delay", {"seconds": 30})
    async with Client(mcp_slow.url, mode=mode, read_timeout_seconds=0.5) as client:
        with pytest.raises(MCPError) as raised:
            await client.list_tools()
    assert raised.value.error.code == REQUEST_TIMEOUT
    assert mcp_slow.count("tools/list") == 1


@pytest.mark.parametrize("mode", MODES)
async def test_slow_server_answers_within_a_longer_timeout(mcp_slow: McpServer, mode: str) -> None:
    mcp_slow.control("delay", {"seconds": 0.2})
    async with Client(mcp_slow.url, mode=mode) as client:
        assert len((await client.list_tools()).tools) == 5


@pytest.mark.parametrize("mode", MODES)
async def test_failing_server_errors_tools_list_but_serves_the_rest(
    mcp_failing: McpServer, mode: str
) -> None:
    async with Client(mcp_failing.url, mode=mode) as client:
        with pytest.raises(MCPError) as raised:
            await client.list_tools()
        prompts = await client.list_prompts()
    assert raised.value.error.code == INTERNAL_ERROR
    assert [p.name for p in prompts.prompts] == ["greet"]
    assert mcp_failing.count("tools/list") == 1


@pytest.mark.parametrize("mode", MODES)
async def test_failing_server_in_http500_mode_refuses_every_post(
    mcp_failing: McpServer, mode: str
) -> None:
    mcp_failing.control("mode", {"mode": "http500"})
    # The SDK raises from inside its transport's task groups, so the error arrives grouped.
    with pytest.raises(ExceptionGroup) as raised:
        async with Client(mcp_failing.url, mode=mode):
            pass
    errors = raised.value.subgroup(MCPError)
    assert errors is not None
    leaves = list(leaf_exceptions(errors))
    assert [(e.error.code, e.error.message) for e in leaves] == [
        (INTERNAL_ERROR, "Server returned an error response")
    ]
    assert mcp_failing.count("initialize") == 1  # auto tried discover first, then fell back
    assert mcp_failing.count("server/discover") == (1 if mode == "auto" else 0)


async def test_changing_server_notifies_handshake_sessions_on_their_get_stream(
    mcp_changing: McpServer,
) -> None:
    changed = asyncio.Event()

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, ToolListChangedNotification):
            changed.set()

    async with Client(mcp_changing.url, mode="legacy", message_handler=on_message) as client:
        before = await client.list_tools(cache_mode="bypass")
        await wait_for(lambda: mcp_changing.count("http:GET") == 1)
        # The GET request has arrived, but the server may not have attached its stream yet, and
        # a notification sent before then is lost (no replay): change again until one lands.
        for attempt in range(int(HANG_GUARD_SECONDS / NOTIFY_RETRY_SECONDS)):
            mcp_changing.control("tools", {"add": [f"added_{attempt}"]})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), NOTIFY_RETRY_SECONDS)
                break
        after = await client.list_tools(cache_mode="bypass")

    assert changed.is_set()
    assert "added_0" not in {tool.name for tool in before.tools}
    assert "added_0" in {tool.name for tool in after.tools}
    assert mcp_changing.count("tools/list") == 2
    assert mcp_changing.count("http:DELETE") == 1


async def test_changing_server_notifies_2026_clients_on_their_listen_stream(
    mcp_changing: McpServer,
) -> None:
    async with (
        Client(mcp_changing.url, mode="auto") as listener,
        Client(mcp_changing.url, mode="auto") as changer,
        listener.listen(tools_list_changed=True) as subscription,
    ):
        assert listener.protocol_version == "2026-07-28"
        grown = await changer.call_tool("grow", {"name": "grown_tool"})
        event = await asyncio.wait_for(anext(subscription), HANG_GUARD_SECONDS)
        after = await listener.list_tools()

    assert type(event).__name__ == "ToolsListChanged"
    assert "grown_tool" in json.dumps(grown.model_dump(mode="json"))
    assert "grown_tool" in {tool.name for tool in after.tools}


@pytest.mark.parametrize("mode", MODES)
async def test_changing_server_reset_restores_the_initial_list(
    mcp_changing: McpServer, mode: str
) -> None:
    mcp_changing.control("tools", {"add": ["temporary"]})
    mcp_changing.reset()
    async with Client(mcp_changing.url, mode=mode) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
    assert "temporary" not in names
    assert "grow" in names


@pytest.mark.parametrize("mode", MODES)
async def test_hostile_server_lists_fifty_thousand_tools(mcp_hostile: McpServer, mode: str) -> None:
    async with Client(mcp_hostile.url_for("/many/mcp"), mode=mode) as client:
        tools = await client.list_tools()
    assert len(tools.tools) == 50_000
    assert mcp_hostile.count("tools/list") == 1


@pytest.mark.parametrize("mode", MODES)
async def test_hostile_server_sends_a_twenty_megabyte_sse_event_the_sdk_refuses(
    mcp_hostile: McpServer, mode: str
) -> None:
    async with Client(mcp_hostile.url_for("/huge-sse/mcp"), mode=mode) as client:
        with pytest.raises(MCPError) as raised:
            await client.list_tools()
    # The SDK's own bound (1 MiB per SSE event) gives up on the stream.
    assert raised.value.error.code == CONNECTION_CLOSED
    assert "SSE stream failed" in raised.value.error.message


@pytest.mark.parametrize("mode", MODES)
async def test_hostile_server_never_ends_its_stream(mcp_hostile: McpServer, mode: str) -> None:
    url = mcp_hostile.url_for("/endless/mcp")
    async with Client(url, mode=mode, read_timeout_seconds=1.0) as client:
        with pytest.raises(MCPError) as raised:
            await client.list_tools()
    # Kept alive forever, never answered: only the caller's own timeout ends it.
    assert raised.value.error.code == REQUEST_TIMEOUT
    assert mcp_hostile.count("tools/list") == 1


@pytest.mark.parametrize("mode", MODES)
async def test_hostile_server_pages_forever(mcp_hostile: McpServer, mode: str) -> None:
    cursors: list[str | None] = []
    async with Client(mcp_hostile.url_for("/pages/mcp"), mode=mode) as client:
        cursor = None
        for _ in range(5):
            page = await client.list_tools(cursor=cursor)
            cursor = page.next_cursor
            cursors.append(cursor)
    assert cursors == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("mode", MODES)
async def test_time_server_behind_mcp_proxy_is_handshake_only(
    mcp_time: BridgedServer, mode: str
) -> None:
    before = mcp_time.count("tools/list")
    async with Client(mcp_time.url, mode=mode) as client:
        # mcp-proxy runs mcp 1.x: auto's discover probe is refused and it falls back.
        assert client.protocol_version == "2025-11-25"
        tools = await client.list_tools()
        now = await client.call_tool("get_current_time", {"timezone": "UTC"})
    assert {"get_current_time", "convert_time"} <= {tool.name for tool in tools.tools}
    assert json.loads(text_of(now.content))["timezone"] == "UTC"
    assert mcp_time.count("tools/list") == before + 1


def leaf_exceptions(group: BaseExceptionGroup[MCPError]) -> list[MCPError]:
    leaves: list[MCPError] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves.extend(leaf_exceptions(error))
        else:
            leaves.append(error)
    return leaves


async def wait_for(condition: Any) -> None:
    """Poll a condition that the server makes true soon; the guard only stops a hang."""
    async with asyncio.timeout(HANG_GUARD_SECONDS):
        while True:
            if await asyncio.to_thread(condition):  # it reads another process's counts
                return
            await asyncio.sleep(0.02)
