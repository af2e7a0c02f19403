"""Batching end to end: the official openai client -> `sluice proxy` -> simulator.

The simulator's answers depend only on each input (never on its batch-mates), so every caller's
answer can be checked exactly against what the simulator gives that input alone, and its call
log shows how requests were grouped (and that no call mixed two API keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
from typing import Any

import openai
import pytest

from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.support.simulator import Simulator, count_tokens, embedding_vector

pytestmark = pytest.mark.integration

EMBEDDING_MODEL = "text-embedding-3-small"
DIMENSIONS = 16  # the simulator's default


def start(
    start_proxy: ProxyFactory,
    simulator: Simulator,
    upstream: dict[str, Any] | None = None,
    **batching: Any,
) -> ProxyProcess:
    return start_proxy(
        {
            "llm": {
                "upstream": {"url": simulator.url, **(upstream or {})},
                "batching": batching,
                "cache": {"mode": "off"},
            }
        }
    )


def client(proxy: ProxyProcess, key: str = "sk-caller") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url, api_key=key, max_retries=0)


async def embed(c: openai.AsyncOpenAI, text: str, **options: Any) -> list[float]:
    answer = await c.embeddings.create(model=EMBEDDING_MODEL, input=text, **options)
    assert [row.index for row in answer.data] == [0]
    assert answer.model == EMBEDDING_MODEL
    return answer.data[0].embedding


async def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    return await asyncio.to_thread(proxy.metric, name, **labels)


# --- embeddings -------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["base64", "float"])
async def test_200_concurrent_embeddings_take_few_upstream_calls_and_each_gets_its_own_vector(
    start_proxy: ProxyFactory, simulator: Simulator, encoding: str
) -> None:
    simulator.configure(shuffle_embeddings=True, latency_ms=20)
    # A long wait, so batches go by size however slowly one client process issues 200 requests.
    proxy = start(start_proxy, simulator, maxBatchSize=32, maxWaitMilliseconds=2000)
    texts = [f"caller {n} says {'word ' * (n % 7)}" for n in range(200)]
    options = {} if encoding == "base64" else {"encoding_format": "float"}  # base64: the default
    async with client(proxy) as c:
        vectors = await asyncio.gather(*(embed(c, t, **options) for t in texts))
    for text, vector in zip(texts, vectors, strict=True):
        assert vector == embedding_vector(EMBEDDING_MODEL, text, DIMENSIONS)
    calls = simulator.calls_for("embeddings")
    assert len(calls) <= math.ceil(200 / 32) + 2
    assert sum(call.n_inputs for call in calls) == 200
    assert {call.body.get("encoding_format") for call in calls} == {
        options.get("encoding_format", "base64")
    }
    # The metrics say what happened.
    label = {"endpoint": "embeddings"}
    assert await metric(proxy, "sluice_batch_size_count", **label) == len(calls)
    assert await metric(proxy, "sluice_batch_size_sum", **label) == 200
    assert await metric(proxy, "sluice_batch_wait_seconds_count", **label) == 200
    saved = {**label, "reason": "batched"}
    assert await metric(proxy, "sluice_upstream_calls_saved_total", **saved) == 200 - len(calls)
    flushes = [
        await metric(proxy, "sluice_batch_flushes_total", endpoint="embeddings", reason=reason)
        for reason in ("size", "timeout", "shutdown")
    ]
    assert sum(flushes) == len(calls)
    assert flushes[0] >= 200 // 32 - 1
    assert await metric(proxy, "sluice_batch_queue_depth", **label) == 0
    assert await metric(proxy, "sluice_batches_in_flight", **label) == 0


async def test_usage_shares_add_up_to_what_the_upstream_reported(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start(start_proxy, simulator, maxBatchSize=64, maxWaitMilliseconds=300)
    texts = [" ".join(["w"] * (n + 1)) for n in range(20)]
    async with client(proxy) as c:
        answers = await asyncio.gather(
            *(c.embeddings.create(model=EMBEDDING_MODEL, input=t) for t in texts)
        )
    calls = simulator.calls_for("embeddings")
    reported = sum(count_tokens(item) for call in calls for item in call.inputs)
    assert sum(a.usage.prompt_tokens for a in answers) == reported
    assert sum(a.usage.total_tokens for a in answers) == reported
    assert len(calls) < len(texts)


async def test_two_api_keys_never_share_a_call(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start(start_proxy, simulator, maxBatchSize=16, maxWaitMilliseconds=300)
    keys = ("sk-tenant-a", "sk-tenant-b")
    async with client(proxy, keys[0]) as a, client(proxy, keys[1]) as b:
        jobs = [(key, f"{key} input {n}") for n in range(40) for key in keys]
        vectors = await asyncio.gather(*(embed(a if k == keys[0] else b, t) for k, t in jobs))
    for (_, text), vector in zip(jobs, vectors, strict=True):
        assert vector == embedding_vector(EMBEDDING_MODEL, text, DIMENSIONS)
    calls = simulator.calls_for("embeddings")
    assert len(calls) < len(jobs)
    assert simulator.stats.authorizations == {f"Bearer {k}" for k in keys}
    for call in calls:
        key = (call.authorization or "").removeprefix("Bearer ")
        assert all(item.startswith(key + " ") for item in call.inputs), call.inputs


async def test_one_empty_input_fails_only_its_caller(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start(start_proxy, simulator, maxWaitMilliseconds=200)
    texts = [f"text {n}" for n in range(10)]
    texts[4] = ""
    async with client(proxy) as c:
        outcomes = await asyncio.gather(*(embed(c, t) for t in texts), return_exceptions=True)
    assert isinstance(outcomes[4], openai.BadRequestError)
    assert outcomes[4].body is not None
    for n, outcome in enumerate(outcomes):
        if n != 4:
            assert outcome == embedding_vector(EMBEDDING_MODEL, texts[n], DIMENSIONS)


async def test_an_input_only_the_upstream_refuses_fails_only_its_caller_with_its_answer(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start(start_proxy, simulator, maxWaitMilliseconds=300)
    texts = [f"text {n}" for n in range(12)]
    texts[7] = "word " * 9000  # beyond the simulator's 8192 tokens per input
    async with client(proxy) as c:
        outcomes = await asyncio.gather(*(embed(c, t) for t in texts), return_exceptions=True)
    refused = outcomes[7]
    assert isinstance(refused, openai.BadRequestError)
    assert refused.code == "context_length_exceeded"
    assert "9000 tokens" in refused.message  # the upstream's words, unchanged
    for n, outcome in enumerate(outcomes):
        if n != 7:
            assert outcome == embedding_vector(EMBEDDING_MODEL, texts[n], DIMENSIONS)
    alone = [c for c in simulator.calls_for("embeddings") if c.n_inputs == 1 and c.status == 400]
    assert [c.inputs for c in alone] == [[texts[7]]]


async def test_a_full_queue_answers_429_with_retry_after(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    simulator.configure(latency_ms=400)
    proxy = start(
        start_proxy,
        simulator,
        maxBatchSize=1,
        maxConcurrentBatches=1,
        maxQueue=2,
        maxWaitMilliseconds=0,
    )
    async with client(proxy) as c:
        outcomes = await asyncio.gather(
            *(embed(c, f"text {n}") for n in range(12)), return_exceptions=True
        )
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    answered = [o for o in outcomes if isinstance(o, list)]
    assert refused
    assert len(refused) + len(answered) == 12
    assert all(r.response.headers["retry-after"] == "1" for r in refused)
    assert all(r.code == "queue_full" for r in refused)
    rejected = await metric(proxy, "sluice_batch_rejected_total", endpoint="embeddings")
    assert rejected == len(refused)


async def test_sigterm_with_pending_items_answers_every_one_of_them(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start(start_proxy, simulator, maxBatchSize=64, maxWaitMilliseconds=10000)
    texts = [f"pending {n}" for n in range(10)]
    async with client(proxy) as c:
        pending = [asyncio.ensure_future(embed(c, t)) for t in texts]
        deadline = time.monotonic() + 10
        while await metric(proxy, "sluice_batch_queue_depth", endpoint="embeddings") < len(texts):
            assert time.monotonic() < deadline, "requests never reached the batcher"
            await asyncio.sleep(0.05)
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        vectors = await asyncio.gather(*pending)
    assert time.monotonic() - started < 5  # flushed at once, not after the 10 s wait
    assert vectors == [embedding_vector(EMBEDDING_MODEL, t, DIMENSIONS) for t in texts]
    assert len(simulator.calls_for("embeddings")) == 1
    assert await asyncio.to_thread(proxy.wait, 15) in (0, -signal.SIGTERM)


async def test_batching_disabled_is_one_call_per_request(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start(start_proxy, simulator, enabled=False)
    async with client(proxy) as c:
        await asyncio.gather(*(embed(c, f"text {n}") for n in range(20)))
    assert len(simulator.calls_for("embeddings")) == 20
    assert await metric(proxy, "sluice_batch_size_count", endpoint="embeddings") == 0


# --- legacy completions -----------------------------------------------------------------------


async def test_completions_with_n_above_one_are_coalesced_and_mapped_back_by_index(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    simulator.configure(shuffle_completions=True)
    proxy = start(start_proxy, simulator, maxWaitMilliseconds=300)
    prompts: list[str | list[str]] = [f"prompt number {n}" for n in range(8)]
    prompts[3] = ["first of a pair", "second of a pair"]  # owns a contiguous slice
    model = "gpt-3.5-turbo-instruct"
    async with client(proxy) as c:
        answers = await asyncio.gather(
            *(c.completions.create(model=model, prompt=p, n=2, max_tokens=40) for p in prompts)
        )
    calls = simulator.calls_for("completions")
    assert len(calls) < len(prompts)
    reported = sum(count_tokens(p) for call in calls for p in call.inputs)
    assert sum(a.usage.prompt_tokens for a in answers if a.usage) == reported
    # Each caller's answer is what the simulator gives its request alone.
    simulator.configure(shuffle_completions=False)
    async with openai.AsyncOpenAI(base_url=simulator.url, api_key="x", max_retries=0) as direct:
        for prompt, answer in zip(prompts, answers, strict=True):
            alone = await direct.completions.create(model=model, prompt=prompt, n=2, max_tokens=40)
            assert [(c.index, c.text) for c in answer.choices] == [
                (c.index, c.text) for c in alone.choices
            ]


async def test_streaming_completions_are_not_coalesced(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start(start_proxy, simulator, maxWaitMilliseconds=300)
    model = "gpt-3.5-turbo-instruct"

    async def stream(prompt: str) -> str:
        chunks = await c.completions.create(model=model, prompt=prompt, stream=True)
        return "".join([chunk.choices[0].text async for chunk in chunks if chunk.choices])

    async with client(proxy) as c:
        texts = await asyncio.gather(*(stream(f"streamed {n}") for n in range(4)))
    assert all(f"streamed {n}" in text for n, text in enumerate(texts))
    assert len(simulator.calls_for("completions")) == 4


# --- chat -------------------------------------------------------------------------------------


async def test_identical_deterministic_chats_share_one_call_and_sampled_ones_do_not(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    simulator.configure(latency_ms=300)
    proxy = start(start_proxy, simulator)
    messages = [{"role": "user", "content": "what is the answer"}]

    async def ask(c: openai.AsyncOpenAI, temperature: float) -> Any:
        return await c.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,
            temperature=temperature,  # type: ignore[arg-type]
        )

    async with client(proxy) as c:
        shared = await asyncio.gather(*(ask(c, 0) for _ in range(5)))
        assert len(simulator.calls_for("chat")) == 1
        assert len({a.model_dump_json() for a in shared}) == 1
        sampled = await asyncio.gather(*(ask(c, 0.9) for _ in range(5)))
    assert len(simulator.calls_for("chat")) == 6
    assert len({a.choices[0].message.content for a in sampled}) == 5
    saved = await metric(
        proxy, "sluice_upstream_calls_saved_total", endpoint="chat_completions", reason="shared"
    )
    assert saved == 4


async def test_identical_chats_of_two_tenants_behind_one_proxy_key_never_share_a_call(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    simulator.configure(latency_ms=300)
    proxy = start_proxy(
        {
            "llm": {
                "upstream": {"url": simulator.url, "apiKeyEnv": "PROXY_KEY"},
                "cache": {"mode": "off"},
            }
        },
        env={"PROXY_KEY": "sk-proxy"},
    )

    async def ask(key: str) -> Any:
        async with client(proxy, key=key) as c:
            return await c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "same"}], temperature=0
            )

    await asyncio.gather(ask("sk-tenant-a"), ask("sk-tenant-b"), ask("sk-tenant-a"))
    # Tenant a's two requests share one call; tenant b's gets its own.
    assert len(simulator.calls_for("chat")) == 2


async def test_a_caller_that_hangs_up_before_its_batch_is_sent_takes_its_input_out(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start(start_proxy, simulator, maxWaitMilliseconds=1000)
    async with client(proxy) as staying, client(proxy) as leaving:
        gone = asyncio.create_task(embed(leaving, "never billed"))
        kept = asyncio.create_task(embed(staying, "billed"))
        await asyncio.sleep(0.3)
        gone.cancel()  # closes its connection: the proxy hears the hang-up
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        assert await kept == pytest.approx(embedding_vector(EMBEDDING_MODEL, "billed", DIMENSIONS))
    inputs = [item for call in simulator.calls_for("embeddings") for item in call.inputs]
    assert inputs == ["billed"]
    assert await metric(proxy, "sluice_batch_queue_depth", endpoint="embeddings") == 0
