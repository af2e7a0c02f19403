"""Redis beyond one node, end to end: the official clients -> `sluice proxy` -> a real Redis
Cluster (three primaries, a replica each) or a real Sentinel set (primary, replica, three
Sentinels), from `tests/support/redistopologies.py`; the simulator is the upstream.

Each test runs against both topologies: answers and per-input embeddings cached across slots,
MCP lists shared by two replicas, invalidation on every primary, and a primary killed under
traffic (answered throughout, cached again once a replica has taken over).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.request
from typing import Any

import mcp
import openai
import orjson
import pytest

from tests.support.proxy import ProxyFactory, ProxyProcess, free_port
from tests.support.redistopologies import RedisClusterSet, RedisSentinelSet
from tests.support.simulator import Simulator, embedding_vector
from tests.support.toolservers import ToolServer

pytestmark = pytest.mark.integration

CHAT_MODEL = "gpt-4o-mini"
ADMIN_TOKEN = "topology-admin"
ADMIN_ENV = {"ADMIN_TOKEN": ADMIN_TOKEN}
EMBED_MODEL = "text-embedding-3-small"
RECOVERY_SECONDS = 40.0
"""Failover (about 2 s here) plus the breaker's longest cooldown (10 s), with room for a slow CI."""


@dataclasses.dataclass
class Topology:
    """A cluster or a Sentinel set, with the Redis settings the proxy needs for it."""

    name: str
    redis: RedisClusterSet | RedisSentinelSet
    settings: dict[str, Any]

    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.redis.url}

    def cache(self, **more: Any) -> dict[str, Any]:
        # A loaded CI box can take longer than the 50 ms default for a first connection.
        redis = {"timeoutMilliseconds": 500, **self.settings}
        return {"backend": "redis", "redis": redis, **more}


@pytest.fixture(params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> Topology:
    if request.param == "cluster":
        return Topology("cluster", request.getfixturevalue("redis_cluster"), {"cluster": True})
    return Topology("sentinel", request.getfixturevalue("redis_sentinels"), {})


def llm_proxy(start_proxy: ProxyFactory, simulator: Simulator, topology: Topology) -> ProxyProcess:
    config = {
        "llm": {
            "upstream": {"url": simulator.url, "retry": {"maxAttempts": 1}},
            "batching": {"enabled": False},
            "cache": topology.cache(),
        },
        "admin": admin_section(),
    }
    return start_proxy(config, env={**topology.env(), **ADMIN_ENV})


def client(proxy: ProxyProcess, key: str = "sk-alice") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url, api_key=key, max_retries=0)


async def chat(c: openai.AsyncOpenAI, content: str, model: str = CHAT_MODEL) -> tuple[str, str]:
    """(x-sluice-cache, answer text) of one deterministic chat request."""
    raw = await c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], temperature=0
    )
    return raw.headers["x-sluice-cache"], raw.parse().choices[0].message.content or ""


def admin_section() -> dict[str, Any]:
    """The admin API on a free port, behind a token: without one it refuses every call."""
    return {"port": free_port(), "tokenEnv": "ADMIN_TOKEN"}


def admin(proxy: ProxyProcess, path: str, body: dict[str, Any]) -> Any:
    port = proxy.config["admin"]["port"]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/{path}",
        data=orjson.dumps(body),
        headers={"content-type": "application/json", "authorization": f"Bearer {ADMIN_TOKEN}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return orjson.loads(answer.read())


async def test_chat_and_per_input_embeddings_are_cached_across_slots(
    start_proxy: ProxyFactory, simulator: Simulator, topology: Topology
) -> None:
    proxy = llm_proxy(start_proxy, simulator, topology)
    questions = [f"question {i}" for i in range(6)]
    inputs = [f"input number {i}" for i in range(30)]
    async with client(proxy) as c:
        first = [await chat(c, q) for q in questions]
        again = [await chat(c, q) for q in questions]
        await c.embeddings.create(model=EMBED_MODEL, input=inputs[::3])
        raw = await c.embeddings.with_raw_response.create(model=EMBED_MODEL, input=inputs)
        repeat = await c.embeddings.with_raw_response.create(model=EMBED_MODEL, input=inputs)
    assert [r[0] for r in first] == ["miss"] * 6
    assert again == [("hit", text) for _, text in first]
    assert len(simulator.calls_for("chat")) == 6
    # 10 inputs cached by the first request: only the other 20 went upstream, then none.
    assert simulator.stats.inputs_by_endpoint["embeddings"] == 10 + 20
    assert repeat.headers["x-sluice-cache"] == "hit"
    dims = simulator.config.default_dimensions
    expected = [embedding_vector(EMBED_MODEL, x, dims) for x in inputs]
    assert [d.embedding for d in raw.parse().data] == expected
    assert [d.embedding for d in repeat.parse().data] == expected
    assert topology.redis.keys() == 6 + 30
    if isinstance(topology.redis, RedisClusterSet):
        # The keys of one request live on every primary: the reads were split per slot.
        assert all(n.dbsize() > 0 for n in topology.redis.primaries())
    assert proxy.metric("sluice_cache_backend_errors_total", backend="redis", operation="mget") == 0
    assert "not reachable at start-up" not in proxy.log()


async def test_deferred_requests_are_kept_in_one_slot_and_answered_from_one_batch(
    start_proxy: ProxyFactory, simulator: Simulator, topology: Topology
) -> None:
    """The deferred store's transactions and multi-key reads, under its `{deferred}` tag."""
    config = {
        "llm": {
            "upstream": {"url": simulator.url, "retry": {"maxAttempts": 1}},
            "cache": topology.cache(),
            "deferred": {
                "assumedBatchLatencySeconds": 1,
                "flushAfterSeconds": 0.3,
                "pollIntervalSeconds": 0.1,
                "maxPollIntervalSeconds": 0.2,
            },
        },
        "admin": admin_section(),
    }
    proxy = start_proxy(config, env={**topology.env(), **ADMIN_ENV})
    async with client(proxy) as c:
        raws = await asyncio.gather(
            *(
                c.chat.completions.with_raw_response.create(
                    model=CHAT_MODEL,
                    messages=[{"role": "user", "content": f"deferred {i}"}],
                    extra_headers={"x-sluice-deferred": "10m"},
                )
                for i in range(5)
            )
        )
    assert [r.headers["x-sluice-deferred"] for r in raws] == ["batch"] * 5
    texts = [r.parse().choices[0].message.content or "" for r in raws]
    assert all(text.startswith(f"Echo: deferred {i} ") for i, text in enumerate(texts))
    assert len(simulator.batch_jobs()) == 1
    assert not simulator.calls_for("chat")
    assert "deferred worker" not in proxy.log()


async def test_two_gateway_replicas_share_mcp_lists_and_an_invalidation(
    start_proxy: ProxyFactory, tool_servers: Any, topology: Topology
) -> None:
    servers: list[ToolServer] = tool_servers("alpha", "beta", "gamma")
    section = {
        "servers": [{"name": s.name, "url": s.url} for s in servers],
        "cache": topology.cache(),
    }
    one, two = (
        start_proxy({"mcp": section, "admin": admin_section()}, {**topology.env(), **ADMIN_ENV})
        for _ in range(2)
    )
    names = []
    for replica in (one, two):
        async with mcp.Client(f"{replica.base}/mcp") as session:
            names.append(sorted(t.name for t in (await session.list_tools()).tools))
    assert names[0] == names[1]
    assert {name.split(".")[0] for name in names[0]} == {"alpha", "beta", "gamma"}
    assert [s.count("tools/list") for s in servers] == [1, 1, 1]  # the second read Redis
    assert admin(one, "mcp/invalidate", {"server": "alpha"})["deleted"] >= 1
    async with mcp.Client(f"{two.base}/mcp") as session:
        await session.list_tools()
    assert [s.count("tools/list") for s in servers] == [2, 1, 1]


async def test_admin_invalidation_deletes_by_scope_on_every_primary(
    start_proxy: ProxyFactory, simulator: Simulator, topology: Topology
) -> None:
    proxy = llm_proxy(start_proxy, simulator, topology)
    for key in ("sk-alice", "sk-bob"):
        async with client(proxy, key) as c:
            for model in (CHAT_MODEL, "gpt-4o"):
                for i in range(4):
                    await chat(c, f"entry {i}", model)
    assert topology.redis.keys() == 16
    if isinstance(topology.redis, RedisClusterSet):
        # Spread over more than one primary, so deleting them all needs a SCAN on each.
        assert sum(n.dbsize() > 0 for n in topology.redis.primaries()) >= 2
    invalidate = "cache/invalidate"
    assert admin(proxy, invalidate, {"scope": "model", "model": "gpt-4o"}) == {"deleted": 8}
    assert admin(proxy, invalidate, {"scope": "tenant", "tenant": "sk-bob"}) == {"deleted": 4}
    async with client(proxy, "sk-alice") as alice, client(proxy, "sk-bob") as bob:
        assert (await chat(alice, "entry 0"))[0] == "hit"
        assert (await chat(bob, "entry 0"))[0] == "miss"
    assert admin(proxy, invalidate, {"scope": "all"}) == {"deleted": 5}
    assert topology.redis.keys() == 0


async def test_a_killed_primary_is_a_short_bypass_and_caching_resumes_after_failover(
    start_proxy: ProxyFactory, simulator: Simulator, topology: Topology
) -> None:
    proxy = llm_proxy(start_proxy, simulator, topology)
    questions = [f"before {i}" for i in range(6)]
    async with client(proxy) as c:
        answers = {q: await chat(c, q) for q in questions}
        assert {result for result, _ in answers.values()} == {"miss"}
        topology.redis.kill_primary()
        during = [await chat(c, f"during {i}") for i in range(20)]
        # Every request was answered by the upstream; the dead primary's share bypassed Redis.
        assert all(text for _, text in during)
        assert "bypass" in {result for result, _ in during}
        topology.redis.wait_failover()
        seen: set[str] = set()
        deadline = time.monotonic() + RECOVERY_SECONDS
        while time.monotonic() < deadline:
            results = [await chat(c, q) for q in questions]
            seen |= {result for result, _ in results}
            if all(result == "hit" for result, _ in results):
                break
            await asyncio.sleep(0.2)
        # The answers cached before the kill, also those the killed primary held, are served
        # again: by the promoted replica, never re-fetched in between ("miss").
        assert results == [("hit", answers[q][1]) for q in questions]
        assert "miss" not in seen
        assert (await chat(c, "after"))[0] == "miss"
        assert (await chat(c, "after"))[0] == "hit"
    errors = proxy.metrics()
    failed = sum(
        value
        for (name, labels), value in errors.items()
        if name == "sluice_cache_backend_errors_total" and ("backend", "redis") in labels
    )
    assert failed > 0
    assert "the cache is bypassed" in proxy.log()


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        pytest.param({"cluster": True}, "redis://127.0.0.1:{port}", id="cluster"),
        pytest.param({}, "redis+sentinel://127.0.0.1:{port}/sluice", id="sentinel"),
    ],
)
async def test_a_proxy_whose_redis_is_unreachable_at_start_up_starts_and_bypasses(
    start_proxy: ProxyFactory, simulator: Simulator, settings: dict[str, Any], url: str
) -> None:
    nowhere = url.format(port=free_port())  # nothing listens there
    config = {
        "llm": {
            "upstream": {"url": simulator.url, "retry": {"maxAttempts": 1}},
            "batching": {"enabled": False},
            "cache": {"backend": "redis", "redis": settings},
        }
    }
    proxy = start_proxy(config, env={"REDIS_URL": nowhere})
    async with client(proxy) as c:
        results = [await chat(c, "hello") for _ in range(3)]
    assert [r for r, _ in results] == ["bypass"] * 3
    assert all(text for _, text in results)
    assert len(simulator.calls_for("chat")) == 3
    assert "redis not reachable at start-up" in proxy.log()
