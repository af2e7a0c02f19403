"""Request ids, W3C trace context and the logs, through a real `sluice proxy`: what the caller
gets back, what the simulator and a real MCP server receive, and what the proxy's log says."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx2
import mcp
import openai
import pytest
from mcp.client.streamable_http import streamable_http_client

from tests.support.proxy import ProxyFactory, ProxyProcess, free_port
from tests.support.simulator import Simulator
from tests.support.toolservers import ToolServer

pytestmark = pytest.mark.integration

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "vendor=opaque,other=value"
TRACE = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
LOG_WAIT_SECONDS = 10.0
ACCESS_FIELDS = {"request_id", "route", "method", "status", "duration_seconds", "cache", "batch"}


def llm_proxy(start_proxy: ProxyFactory, simulator: Simulator, *args: str) -> ProxyProcess:
    config = {
        "llm": {"upstream": {"url": simulator.url}, "batching": {"maxWaitMilliseconds": 100}},
        "admin": {"port": free_port()},
    }
    return start_proxy(config, None, *args)


def client(proxy: ProxyProcess, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy.url, api_key="sk-test", max_retries=0, default_headers=headers
    )


def chat(proxy: ProxyProcess, **headers: str) -> Any:
    with client(proxy, **headers) as c:
        return c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], temperature=0
        )


def json_lines(proxy: ProxyProcess) -> list[dict[str, Any]]:
    """Every line of the proxy's log, each of which must be one JSON object."""
    return [json.loads(line) for line in proxy.log().splitlines() if line]


def access_lines(proxy: ProxyProcess, route: str | None = None, count: int = 0) -> list[Any]:
    """The access lines (of `route`), once there are `count` of them: they are written in bulk,
    a moment after their requests."""
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while True:
        lines = [
            line
            for line in json_lines(proxy)
            if line["logger"] == "sluice.access" and route in (None, line["route"])
        ]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_a_callers_request_id_and_trace_context_reach_the_upstream_and_the_id_comes_back(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = llm_proxy(start_proxy, simulator)
    raw = chat(proxy, **{"x-request-id": "caller-chosen-7", **TRACE})
    assert raw.headers["x-request-id"] == "caller-chosen-7"
    (call,) = simulator.calls_for("chat")
    assert call.headers["x-request-id"] == "caller-chosen-7"
    assert call.headers["traceparent"] == TRACEPARENT
    assert call.headers["tracestate"] == TRACESTATE
    # The simulator's own id, as OpenAI sends one, is kept under another name.
    assert raw.headers["x-upstream-request-id"].startswith("req_")
    assert raw.headers.get_list("x-request-id") == ["caller-chosen-7"]


def test_a_request_without_an_id_gets_a_fresh_one_which_the_upstream_sees_too(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = llm_proxy(start_proxy, simulator)
    first = chat(proxy)
    second = chat(proxy)  # a cache hit: answered by the proxy alone, still with its own id
    assert second.headers["x-sluice-cache"] == "hit"
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert ids[0] != ids[1]
    assert simulator.calls_for("chat")[0].headers["x-request-id"] == ids[0]


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("a b", id="space"),
        pytest.param("x" * 201, id="too-long"),
        pytest.param("", id="empty"),
    ],
)
def test_an_unusable_request_id_is_replaced(
    start_proxy: ProxyFactory, simulator: Simulator, given: str
) -> None:
    proxy = llm_proxy(start_proxy, simulator)
    raw = chat(proxy, **{"x-request-id": given})
    made = raw.headers["x-request-id"]
    assert made != given
    assert simulator.calls_for("chat")[0].headers["x-request-id"] == made


async def test_the_mcp_gateway_passes_the_request_id_and_trace_context_to_the_server(
    start_proxy: ProxyFactory, tool_servers: Any
) -> None:
    (alpha,) = tool_servers("alpha")
    server: ToolServer = alpha
    proxy = start_proxy({"mcp": {"servers": [{"name": "alpha", "url": server.url}]}})
    headers = {"x-request-id": "mcp-caller-1", **TRACE}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        mcp.Client(streamable_http_client(f"{proxy.base}/mcp", http_client=http)) as session,
    ):
        result = await session.call_tool("alpha.add", {"a": 2, "b": 3})
    assert not result.is_error
    assert server.traced("tools/call") == headers


def test_logs_are_one_json_object_a_line_with_an_access_line_per_request(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = llm_proxy(start_proxy, simulator, "--log-format", "json")
    chat(proxy, **{"x-request-id": "logged-1"})
    chat(proxy, **{"x-request-id": "logged-2"})
    status, _ = proxy.get("/v1/nowhere/..")
    access_lines(proxy, "not_found", 1)
    lines = {line["request_id"]: line for line in access_lines(proxy)}
    assert lines["logged-1"].keys() >= ACCESS_FIELDS
    assert lines["logged-1"] | {"duration_seconds": 0, "time": ""} == {
        "request_id": "logged-1", "route": "chat_completions", "method": "POST",
        "status": 200, "cache": "miss", "batch": None, "duration_seconds": 0,
        "level": "info", "logger": "sluice.access", "time": "",
        "message": lines["logged-1"]["message"],
    }  # fmt: skip
    assert lines["logged-2"]["cache"] == "hit"
    assert 0 < lines["logged-1"]["duration_seconds"] < 60
    assert status in {r["status"] for r in lines.values() if r["route"] == "not_found"}


async def test_batched_requests_log_the_batch_that_carried_them_and_send_its_id_upstream(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = llm_proxy(start_proxy, simulator, "--log-format", "json")
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="sk-test", max_retries=0) as c:
        await asyncio.gather(
            *(c.embeddings.create(model="text-embedding-3-small", input=f"t{i}") for i in range(4))
        )
    calls = simulator.calls_for("embeddings")
    embeds = access_lines(proxy, "embeddings", 4)
    assert len(embeds) == 4
    batches = {line["batch"] for line in embeds}
    upstream_ids = {call.headers["x-request-id"] for call in calls if call.n_inputs > 1}
    assert len(calls) < 4  # coalesced
    assert upstream_ids
    assert upstream_ids <= batches


def test_the_access_log_can_be_turned_off(start_proxy: ProxyFactory, simulator: Simulator) -> None:
    proxy = llm_proxy(start_proxy, simulator, "--log-format", "json", "--no-access-log")
    assert chat(proxy).status_code == 200
    proxy.stop()
    assert access_lines(proxy) == []


def test_a_bad_log_format_from_the_environment_is_one_line_naming_it(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    with pytest.raises(RuntimeError, match="exited with 2") as failed:
        start_proxy({"llm": {"upstream": {"url": simulator.url}}}, {"SLUICE_LOG_FORMAT": "xml"})
    assert "sluice: --log-format 'xml': must be text or json" in str(failed.value)
