"""Deferred mode end to end: openai client -> `sluice proxy` -> the simulator's Batch API.

Every request here opts in with `x-sluice-deferred` (or the route does), and the simulator's
call log shows what reached the provider: Batch API jobs (`batch_jobs`, `batch_calls`) or
synchronous calls (`calls_for("chat")`). Redis is a real `redis-server`; the restart test kills
the proxy with SIGKILL while its job is pending.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio
from openai.types.chat import ChatCompletion

from sluice.proxy.llm.deferred import records, redisstore
from tests.support.proxy import ProxyFactory, ProxyProcess, free_port
from tests.support.redis import RedisServer
from tests.support.simulator import Simulator, bill

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
FAST = {"flushAfterSeconds": 0.3, "pollIntervalSeconds": 0.1, "maxPollIntervalSeconds": 0.2}
"""Deferred settings that let a test's jobs go and come back within a second."""


def config(
    simulator: Simulator, cache: dict[str, Any] | None = None, **deferred: Any
) -> dict[str, Any]:
    return {
        "llm": {
            "upstream": {"url": simulator.url, "retry": {"maxAttempts": 1}, "timeoutSeconds": 10},
            "cache": cache or {"mode": "off"},
            "deferred": {"assumedBatchLatencySeconds": 1, **FAST, **deferred},
        },
        "admin": {"port": free_port()},
    }


def client(proxy: ProxyProcess, key: str = "sk-alice") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url, api_key=key, max_retries=0, timeout=60)


async def ask(
    c: openai.AsyncOpenAI, content: str, deadline: str = "10m", **headers: str
) -> tuple[ChatCompletion, dict[str, str]]:
    raw = await c.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        extra_headers={"x-sluice-deferred": deadline, **headers},
    )
    return raw.parse(), dict(raw.headers)


async def submit_async(c: openai.AsyncOpenAI, content: str, deadline: str = "10m") -> str:
    """POST with `Prefer: respond-async`; the job's location from the 202."""
    raw = await c.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        extra_headers={"x-sluice-deferred": deadline, "Prefer": "respond-async"},
    )
    assert raw.status_code == 202
    assert raw.headers["x-sluice-job"] in raw.headers["location"]
    return raw.headers["location"]


async def collect(
    proxy: ProxyProcess, location: str, key: str = "sk-alice", within: float = 30
) -> ChatCompletion:
    """GET the job until it is done; its answer, parsed as the openai client parses a chat."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status, _, body = await get(proxy, location, key)
        if status == 200:
            return ChatCompletion.model_validate(body)
        assert status == 202, body
        assert body["status"] == "pending"
        await asyncio.sleep(0.1)
    raise AssertionError(f"{location} still pending after {within}s")


async def get(
    proxy: ProxyProcess, path: str, key: str | None = None
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of a GET, as any HTTP client would send it."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(proxy.base + path, headers=headers) as answer,
    ):
        return answer.status, dict(answer.headers), await answer.json()


def echoed(completion: ChatCompletion) -> str:
    return completion.choices[0].message.content or ""


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_200_deferred_chats_become_at_most_ceil_200_over_max_jobs_each_caller_its_own_answer(
    store: str, start_proxy: ProxyFactory, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    simulator.configure(batch_delay_ms=200)
    env = {}
    if store == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_server").url
    settings = config(simulator, maxItemsPerBatch=64, store=store)
    proxy = start_proxy(settings, env)
    async with client(proxy) as c:
        answers = await asyncio.gather(*(ask(c, f"question number {i}") for i in range(200)))
        for i, (completion, headers) in enumerate(answers):
            assert echoed(completion).startswith(f"Echo: question number {i} ")
            assert headers["x-sluice-deferred"] == "batch"
        jobs = simulator.batch_jobs()
        assert 1 <= len(jobs) <= math.ceil(200 / 64)
        assert sum(job["request_counts"]["total"] for job in jobs) == 200
        assert simulator.calls_for("chat") == []  # not one synchronous call
        assert len(simulator.stats.batch_calls) == 200
        labels = {"endpoint": "chat_completions", "path": "batch"}
        assert proxy.metric("sluice_deferred_answers_total", **labels) == 200
        assert proxy.metric("sluice_deferred_batches_total", state="completed") == len(jobs)


async def test_a_per_item_error_reaches_only_its_caller(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start_proxy(config(simulator, maxItemsPerBatch=4))
    async with client(proxy) as c:

        async def refused() -> openai.BadRequestError:
            with pytest.raises(openai.BadRequestError) as caught:
                await c.chat.completions.create(
                    model=MODEL, messages=[], extra_headers={"x-sluice-deferred": "10m"}
                )
            return caught.value

        good, error = await asyncio.gather(
            asyncio.gather(*(ask(c, f"fine {i}") for i in range(3))), refused()
        )
        assert [echoed(completion).split(" [")[0] for completion, _ in good] == [
            f"Echo: fine {i}" for i in range(3)
        ]
        assert error.body["param"] == "messages"  # type: ignore[index]
        assert "non-empty" in error.message
        (job,) = simulator.batch_jobs()
        assert job["request_counts"] == {"total": 4, "completed": 3, "failed": 1}


async def test_an_expired_job_answers_its_finished_items_and_resends_the_rest(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    simulator.configure(batch_delay_ms=400)
    simulator.expire_next_batch(after_ms=200)  # half of the first job's items run
    proxy = start_proxy(config(simulator, maxItemsPerBatch=8))
    async with client(proxy) as c:
        answers = await asyncio.gather(*(ask(c, f"item {i}") for i in range(8)))
        for i, (completion, _) in enumerate(answers):
            assert echoed(completion).startswith(f"Echo: item {i} ")
        first, second = sorted(simulator.batch_jobs(), key=lambda job: job["created_at"])
        assert first["status"] == "expired"
        assert 0 < first["request_counts"]["completed"] < 8
        assert second["request_counts"]["total"] == 8 - first["request_counts"]["completed"]
        assert simulator.calls_for("chat") == []
        assert proxy.metric("sluice_deferred_batches_total", state="expired") == 1


async def test_a_deadline_shorter_than_the_batch_is_met_by_the_synchronous_fallback(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    simulator.configure(batch_delay_ms=60_000)
    settings = config(simulator, fallbackMarginSeconds=1)
    settings["llm"]["upstream"]["timeoutSeconds"] = 1
    proxy = start_proxy(settings)
    started = time.monotonic()
    async with client(proxy) as c:
        completion, headers = await ask(c, "in a hurry", deadline="4s")
    assert time.monotonic() - started < 4
    assert echoed(completion).startswith("Echo: in a hurry ")
    assert headers["x-sluice-deferred"] == "sync"
    assert len(simulator.calls_for("chat")) == 1
    assert len(simulator.batch_jobs()) == 1  # it was batched first, then rescued
    assert proxy.metric("sluice_deferred_fallbacks_total", reason="deadline") == 1
    # Its job has nothing left to answer: the proxy cancels it.
    for _ in range(100):
        if simulator.batch_jobs()[0]["status"] in ("cancelling", "cancelled"):
            break
        await asyncio.sleep(0.05)
    assert simulator.batch_jobs()[0]["status"] in ("cancelling", "cancelled")


async def test_a_job_is_fetched_by_get_and_another_tenants_get_is_404(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    simulator.configure(batch_delay_ms=300)
    proxy = start_proxy(config(simulator))
    async with client(proxy) as c:
        location = await submit_async(c, "later please")
    pending = await get(proxy, location, "sk-alice")
    other = await get(proxy, location, "sk-mallory")
    made_up = await get(proxy, "/v1/sluice/jobs/job_" + "0" * 32, "sk-alice")
    assert pending[0] == 202
    assert pending[1]["Location"] == location
    assert other[0] == 404
    assert other[2]["error"]["code"] == "job_not_found"
    assert made_up[0] == 404
    completion = await collect(proxy, location)
    assert echoed(completion).startswith("Echo: later please ")
    again = await collect(proxy, location)  # kept: the same answer for every GET
    assert again == completion
    assert (await get(proxy, location, "sk-mallory"))[0] == 404


async def test_a_streaming_request_that_asks_to_be_deferred_gets_a_clear_400(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start_proxy(config(simulator, enabled=True))
    async with client(proxy) as c:
        with pytest.raises(openai.BadRequestError) as caught:
            await c.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                extra_headers={"x-sluice-deferred": "true"},
            )
        assert "streaming requests cannot be deferred" in caught.value.message
        with pytest.raises(openai.BadRequestError) as bad:
            await ask(c, "hi", deadline="soonish")
        assert bad.value.body["param"] == "x-sluice-deferred"  # type: ignore[index]
        # The route defers everything it can; a stream that did not ask is served as ever.
        stream = await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert [chunk async for chunk in stream]
        assert simulator.batch_jobs() == []


async def test_a_proxy_killed_while_its_job_is_pending_answers_the_job_after_a_restart(
    start_proxy: ProxyFactory, simulator: Simulator, redis_server: RedisServer
) -> None:
    simulator.configure(batch_delay_ms=2000)
    settings = config(simulator, cache={"backend": "redis"})
    env = {"REDIS_URL": redis_server.url}
    first = start_proxy(settings, env)
    async with client(first) as c:
        location = await submit_async(c, "survive a crash")
    for _ in range(100):  # until its job is submitted
        if simulator.batch_jobs():
            break
        await asyncio.sleep(0.05)
    (job,) = simulator.batch_jobs()
    assert job["status"] in ("validating", "in_progress")
    first.signal(signal.SIGKILL)
    first.wait()
    second = start_proxy(settings, env)
    completion = await collect(second, location)
    assert echoed(completion).startswith("Echo: survive a crash ")
    assert len(simulator.batch_jobs()) == 1  # the same job, polled by the new process
    assert simulator.calls_for("chat") == []


async def test_a_1000_request_eval_costs_half_as_much_deferred_as_sent_plainly(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    # A long flushAfter: the eval's items go in full jobs of 500 as they arrive.
    proxy = start_proxy(config(simulator, maxItemsPerBatch=500, flushAfterSeconds=5))
    async with client(proxy) as c:
        prompts = [f"eval case {i}: what is {i} plus {i}?" for i in range(1000)]
        limit = asyncio.Semaphore(64)

        async def plainly(prompt: str) -> None:
            async with limit:
                await c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}]
                )

        await asyncio.gather(*(plainly(p) for p in prompts))
        plain = bill(simulator.stats)
        simulator.reset()
        locations = await asyncio.gather(*(submit_async(c, p) for p in prompts))
        answers = [await collect(proxy, location) for location in locations]
        deferred = bill(simulator.stats)
        assert all(
            echoed(a).startswith(f"Echo: {p} ") for a, p in zip(answers, prompts, strict=True)
        )
        assert plain.sync_calls == 1000
        assert plain.batch_items == 0
        assert deferred.sync_calls == 0
        assert deferred.batch_items == 1000
        jobs = simulator.batch_jobs()
        assert all(job["request_counts"]["total"] <= 500 for job in jobs)
        assert len(jobs) >= 2
        assert deferred.dollars == pytest.approx(plain.dollars / 2)
        print(
            f"\n1,000-request eval, {MODEL}: plainly ${plain.dollars:.6f} in {plain.sync_calls} "
            f"calls; deferred ${deferred.dollars:.6f} in {len(jobs)} Batch API "
            f"jobs ({deferred.batch_items} items)"
        )


async def test_embeddings_and_completions_deferred_answer_as_their_synchronous_calls_do(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start_proxy(config(simulator, enabled=True))  # the route defers: no header needed
    async with client(proxy) as c:
        embedded, completed = await asyncio.gather(
            c.embeddings.create(model="text-embedding-3-small", input=["one", "two"]),
            c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi"),
        )
        assert {job["endpoint"] for job in simulator.batch_jobs()} == {
            "/v1/embeddings",
            "/v1/completions",
        }
        assert simulator.calls_for("embeddings") == []
        plain_embedded = await c.embeddings.create(
            model="text-embedding-3-small",
            input=["one", "two"],
            extra_headers={"x-sluice-deferred": "false"},
        )
    assert [e.embedding for e in embedded.data] == [e.embedding for e in plain_embedded.data]
    assert embedded.usage == plain_embedded.usage
    assert completed.choices[0].text.startswith("Completion of: Say hi")


async def test_another_replica_answers_a_jobs_get_from_the_shared_redis(
    start_proxy: ProxyFactory, simulator: Simulator, redis_server: RedisServer
) -> None:
    settings = config(simulator, cache={"backend": "redis"})
    env = {"REDIS_URL": redis_server.url}
    one, two = start_proxy(settings, env), start_proxy(settings, env)
    async with client(one) as c:
        location = await submit_async(c, "ask one, collect from two")
    completion = await collect(two, location)
    assert echoed(completion).startswith("Echo: ask one, collect from two ")
    assert (await get(two, location, "sk-mallory"))[0] == 404


async def test_the_query_and_billing_headers_of_a_group_go_with_its_batch_api_calls(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start_proxy(config(simulator))
    async with openai.AsyncOpenAI(
        base_url=proxy.url,
        api_key="sk-azure",
        max_retries=0,
        default_query={"api-version": "2025-01-01"},
        organization="org-a",
    ) as c:
        completion, _ = await ask(c, "with a version")
    assert echoed(completion).startswith("Echo: with a version ")
    calls = simulator.calls_for("files") + simulator.calls_for("batches")
    assert calls
    for call in calls:
        assert call.path.endswith("?api-version=2025-01-01"), call.path
        assert call.authorization == "Bearer sk-azure"
        assert call.headers["openai-organization"] == "org-a"


async def test_a_policy_vary_header_keeps_groups_apart_and_goes_with_their_batch_api_calls(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    settings = config(simulator)
    settings["llm"]["varyHeaders"] = ["x-team"]
    proxy = start_proxy(settings)
    async with client(proxy) as c:
        answers = await asyncio.gather(
            ask(c, "for red", **{"x-team": "red"}), ask(c, "for blue", **{"x-team": "blue"})
        )
    assert [echoed(completion)[:14] for completion, _ in answers] == [
        "Echo: for red ",
        "Echo: for blue",
    ]
    assert len(simulator.batch_jobs()) == 2
    teams = {call.headers.get("x-team") for call in simulator.calls_for("batches")}
    assert teams == {"red", "blue"}


async def test_the_redis_store_lists_only_groups_with_waiting_items(
    redis_server: RedisServer,
) -> None:
    """Else the worker's every tick reads every group ever seen (each payer, each model)."""
    client = redis.asyncio.Redis.from_url(redis_server.url)
    store = redisstore.RedisJobStore(client, "t:", 60)
    group = records.Group("chat_completions", MODEL, {"authorization": "Bearer k"}, "")
    now = time.time()
    try:
        first = records.Item("job_1", "tenant", group.key, {"model": MODEL}, now + 600, now)
        await store.add(first, group, waiting=True)
        await store.forget(group.key)
        assert await store.groups() == [group.key]  # an item waits: still listed
        assert await store.take(group.key, 10) == [first]
        await store.forget(group.key)
        assert await store.groups() == []
        assert await store.group(group.key) == group  # its record stays for its jobs
        await store.requeue([first])
        assert await store.groups() == [group.key]
    finally:
        await store.close()
