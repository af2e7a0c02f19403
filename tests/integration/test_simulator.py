"""The upstream simulator, driven by the official ``openai`` client (sync and async).

Every other integration test trusts the simulator to behave like the real API, so these tests pin
down that the SDK parses all of its answers, that its answers are the deterministic ones tests
predict with ``embedding_vector``, and that fault injection surfaces as the SDK's own exceptions.
"""

from __future__ import annotations

import base64
import math
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.support.simulator import (
    SimConfig,
    Simulator,
    SimulatorThread,
    count_tokens,
    embedding_base64,
    embedding_vector,
)

pytestmark = pytest.mark.integration

EMBED_MODEL = "text-embedding-3-small"
CHAT_MODEL = "gpt-4o-mini"
TEXT_MODEL = "gpt-3.5-turbo-instruct"
KEY = "sk-test-alpha"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(simulator: Simulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=simulator.url, api_key=KEY, max_retries=0) as sync_client:
        yield sync_client


@pytest.fixture
async def aclient(simulator: Simulator) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=simulator.url, api_key=KEY, max_retries=0) as c:
        yield c


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


# ---- pure helpers --------------------------------------------------------------------------------


def test_embedding_vector_is_deterministic_unit_and_float32_exact() -> None:
    vec = embedding_vector(EMBED_MODEL, "hello world", 16)
    assert vec == embedding_vector(EMBED_MODEL, "hello world", 16)
    assert len(vec) == 16
    assert math.isclose(math.sqrt(sum(v * v for v in vec)), 1.0, rel_tol=1e-6)
    assert list(struct.unpack("<16f", struct.pack("<16f", *vec))) == vec  # exact in float32
    assert vec != embedding_vector(EMBED_MODEL, "hello world!", 16)
    assert vec != embedding_vector("text-embedding-3-large", "hello world", 16)
    assert vec[:8] != embedding_vector(EMBED_MODEL, "hello world", 8)
    assert embedding_vector(EMBED_MODEL, [1, 2, 3], 4) != embedding_vector(EMBED_MODEL, "1,2,3", 4)
    decoded = struct.unpack(
        "<16f", base64.b64decode(embedding_base64(EMBED_MODEL, "hello world", 16))
    )
    assert list(decoded) == vec


def test_count_tokens() -> None:
    assert count_tokens("one two  three\nfour") == 4
    assert count_tokens("   ") == 1
    assert count_tokens([5, 6, 7]) == 3


# ---- embeddings ----------------------------------------------------------------------------------


def test_embeddings_sync_default_base64_decodes_to_the_vectors(
    simulator: Simulator, client: openai.OpenAI
) -> None:
    inputs = ["hello world", "the quick brown fox"]
    response = client.embeddings.create(model=EMBED_MODEL, input=inputs)

    assert [d.index for d in response.data] == [0, 1]
    for item, data in zip(inputs, response.data, strict=True):
        assert data.embedding == embedding_vector(EMBED_MODEL, item, 16)
    assert response.model == EMBED_MODEL
    assert response.usage.prompt_tokens == response.usage.total_tokens == 6
    (call,) = simulator.calls
    assert call.body["encoding_format"] == "base64"  # the SDK asks for base64 unless told otherwise
    assert call.inputs == inputs
    assert call.authorization == f"Bearer {KEY}"


async def test_embeddings_async_float_with_dimensions(aclient: openai.AsyncOpenAI) -> None:
    response = await aclient.embeddings.create(
        model=EMBED_MODEL, input="hello", dimensions=8, encoding_format="float"
    )
    assert response.data[0].embedding == embedding_vector(EMBED_MODEL, "hello", 8)


async def test_embeddings_explicit_base64_is_left_encoded(aclient: openai.AsyncOpenAI) -> None:
    response = await aclient.embeddings.create(
        model=EMBED_MODEL, input="hello", encoding_format="base64"
    )
    # The SDK only decodes base64 it asked for itself; an explicit request gets the raw string.
    assert response.data[0].embedding == embedding_base64(EMBED_MODEL, "hello", 16)  # type: ignore[comparison-overlap]


def test_embeddings_token_arrays(simulator: Simulator, client: openai.OpenAI) -> None:
    one = client.embeddings.create(model=EMBED_MODEL, input=[1, 2, 3])
    assert one.data[0].embedding == embedding_vector(EMBED_MODEL, [1, 2, 3], 16)
    assert one.usage.prompt_tokens == 3

    many = client.embeddings.create(model=EMBED_MODEL, input=[[1, 2], [3]])
    assert [d.embedding for d in many.data] == [
        embedding_vector(EMBED_MODEL, [1, 2], 16),
        embedding_vector(EMBED_MODEL, [3], 16),
    ]
    assert simulator.stats.inputs_by_endpoint == {"embeddings": 3}


def test_embeddings_shuffled_order_maps_by_index(
    simulator: Simulator, client: openai.OpenAI
) -> None:
    simulator.configure(shuffle_embeddings=True)
    inputs = [f"input number {i}" for i in range(64)]
    response = client.embeddings.create(model=EMBED_MODEL, input=inputs)

    assert [d.index for d in response.data] != list(range(64))  # 1/64! chance of a false failure
    for data in response.data:
        assert data.embedding == embedding_vector(EMBED_MODEL, inputs[data.index], 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input": ""}, "'$.input' is invalid"),
        ({"input": ["ok", ""]}, "'$.input' is invalid"),
        ({"input": [[1], []]}, "'$.input' is invalid"),
        ({"input": []}, "'$.input' is invalid"),
        ({"input": ["x"] * 2049}, "'$.input' is invalid"),
        ({"input": "a b c d e f"}, "maximum context length is 5 tokens"),
        ({"input": "ok", "model": ""}, "you must provide a model parameter"),
        ({"input": "ok", "dimensions": 0}, "Invalid 'dimensions'"),
    ],
)
def test_embeddings_validation(
    simulator: Simulator, client: openai.OpenAI, kwargs: dict[str, Any], message: str
) -> None:
    simulator.configure(max_input_tokens=5)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(**{"model": EMBED_MODEL, **kwargs})
    assert caught.value.status_code == 400
    assert message in caught.value.message
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "invalid_request_error"


# ---- chat completions ----------------------------------------------------------------------------


def test_chat_is_deterministic_and_parameter_sensitive(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=CHAT_MODEL, messages=_user("hello there"))
    again = client.chat.completions.create(model=CHAT_MODEL, messages=_user("hello there"), seed=7)
    other = client.chat.completions.create(
        model=CHAT_MODEL, messages=_user("hello there"), max_tokens=50
    )

    text = first.choices[0].message.content
    assert text is not None
    assert text.startswith("Echo: hello there [")
    assert again.choices[0].message.content == text  # seed does not change the text
    assert other.choices[0].message.content != text  # other parameters do
    assert first.object == "chat.completion"
    assert first.id.startswith("chatcmpl-")
    assert first.system_fingerprint
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None
    assert first.usage.prompt_tokens == 2
    assert first.usage.completion_tokens == count_tokens(text)
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens


def test_chat_n_choices_and_max_tokens(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=CHAT_MODEL, messages=_user("hi"), n=3)
    texts = [c.message.content for c in response.choices]
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert len(set(texts)) == 3

    short = client.chat.completions.create(model=CHAT_MODEL, messages=_user("hi"), max_tokens=1)
    assert short.choices[0].message.content == "Echo:"
    assert short.choices[0].finish_reason == "length"


def test_chat_temperature_without_seed_is_random(client: openai.OpenAI) -> None:
    def ask(**kw: Any) -> str | None:
        reply = client.chat.completions.create(model=CHAT_MODEL, messages=_user("hi"), **kw)
        content: str | None = reply.choices[0].message.content
        return content

    assert ask(temperature=0.8) != ask(temperature=0.8)
    assert ask(temperature=0.8, seed=1) == ask(temperature=0.8, seed=1) == ask()
    assert ask(temperature=0) == ask()


async def test_chat_stream_with_usage(aclient: openai.AsyncOpenAI) -> None:
    plain = await aclient.chat.completions.create(model=CHAT_MODEL, messages=_user("a b c d"))
    stream = await aclient.chat.completions.create(
        model=CHAT_MODEL,
        messages=_user("a b c d"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == plain.choices[0].message.content
    assert len(chunks) >= 5  # role, several content deltas, finish, usage
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" for c in chunks)


async def test_chat_stream_wire_format(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    body = {"model": CHAT_MODEL, "messages": _user("x y"), "stream": True, "n": 2}
    async with http.post(f"{simulator.url}/chat/completions", json=body) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = await response.read()

    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    assert all("usage" not in c for c in chunks)  # absent unless include_usage was asked for
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1}


def test_chat_stream_sync_with_chunk_delay(simulator: Simulator, client: openai.OpenAI) -> None:
    simulator.configure(stream_chunk_delay_ms=20)
    started = time.perf_counter()
    with client.chat.completions.create(
        model=CHAT_MODEL, messages=_user("one two"), stream=True
    ) as stream:
        chunks = list(stream)
    assert len(chunks) == 6  # role, "Echo:", " one", " two", " [digest]", finish
    assert time.perf_counter() - started >= 0.1  # five pauses between six events


def test_chat_validation(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=CHAT_MODEL, messages=[])
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        client.chat.completions.create(
            model=CHAT_MODEL, messages=_user("x"), stream_options={"include_usage": True}
        )


# ---- legacy completions --------------------------------------------------------------------------


def test_completions_prompt_array_with_n(simulator: Simulator, client: openai.OpenAI) -> None:
    simulator.configure(shuffle_completions=True)
    prompts = ["alpha", "beta", "gamma"]
    response = client.completions.create(model=TEXT_MODEL, prompt=prompts, n=2)

    by_index = {c.index: c for c in response.choices}
    assert sorted(by_index) == list(range(6))
    for index, choice in by_index.items():
        assert choice.text.startswith(f"Completion of: {prompts[index // 2]} [")  # index = i*n + j
        assert choice.logprobs is None
        assert choice.finish_reason == "stop"
    assert response.object == "text_completion"
    assert response.usage is not None
    assert response.usage.prompt_tokens == 3

    alone = client.completions.create(model=TEXT_MODEL, prompt="beta")
    assert alone.choices[0].text == by_index[2].text  # independent of the other prompts


async def test_completions_stream_with_usage(aclient: openai.AsyncOpenAI) -> None:
    plain = await aclient.completions.create(model=TEXT_MODEL, prompt=["p one", "p two"])
    stream = await aclient.completions.create(
        model=TEXT_MODEL,
        prompt=["p one", "p two"],
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {0: "", 1: ""}
    chunks = [chunk async for chunk in stream]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == {c.index: c.text for c in plain.choices}
    assert chunks[-1].choices == []
    assert chunks[-1].usage == plain.usage


def test_completions_token_prompts(client: openai.OpenAI) -> None:
    response = client.completions.create(model=TEXT_MODEL, prompt=[[1, 2, 3], [4]])
    assert [c.text.split(" [")[0] for c in response.choices] == [
        "Completion of: <3 tokens>",
        "Completion of: <1 tokens>",
    ]
    assert response.usage is not None
    assert response.usage.prompt_tokens == 4


# ---- models, files, pass-through -----------------------------------------------------------------


def test_models_and_files(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert CHAT_MODEL in ids
    assert EMBED_MODEL in ids
    assert client.models.retrieve(CHAT_MODEL).id == CHAT_MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    assert list(client.files.list()) == []


async def test_catch_all_echoes_the_request(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    payload = b'{"b": 1,  "a": [2]}'  # odd spacing: proves the raw bytes arrive unchanged
    async with http.put(
        f"{simulator.url}/vector_stores/vs_1?limit=2&limit=3",
        data=payload,
        headers={"Authorization": "Bearer k1", "X-Custom": "yes", "Content-Type": "text/plain"},
    ) as response:
        assert response.status == 200
        echo = await response.json()

    assert echo["method"] == "PUT"
    assert echo["path"] == "/v1/vector_stores/vs_1"
    assert echo["query"] == "limit=2&limit=3"
    assert echo["query_params"] == {"limit": ["2", "3"]}
    assert echo["headers"]["x-custom"] == "yes"
    assert base64.b64decode(echo["body_base64"]) == payload
    assert echo["json"] == {"b": 1, "a": [2]}
    assert simulator.stats.calls_by_endpoint == {"other": 1}


# ---- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
        (401, openai.AuthenticationError),
        (400, openai.BadRequestError),
    ],
)
async def test_injected_status(
    simulator: Simulator, aclient: openai.AsyncOpenAI, status: int, error: type[Exception]
) -> None:
    simulator.fail_next(status, retry_after=2, endpoint="embeddings", count=2)
    for _ in range(2):
        with pytest.raises(error) as caught:
            await aclient.embeddings.create(model=EMBED_MODEL, input="x")
        assert isinstance(caught.value, openai.APIStatusError)
        assert caught.value.status_code == status
        assert caught.value.response.headers["retry-after"] == "2"
    # Exhausted after two uses; chat was never targeted.
    await aclient.embeddings.create(model=EMBED_MODEL, input="x")
    assert [c.status for c in simulator.calls_for("embeddings")] == [status, status, 200]


def test_fault_targets_only_its_endpoint(simulator: Simulator, client: openai.OpenAI) -> None:
    simulator.fail_next(429, endpoint="/v1/chat/completions")
    client.embeddings.create(model=EMBED_MODEL, input="x")
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=CHAT_MODEL, messages=_user("x"))
    assert simulator.pending_faults() == []


def test_hang_times_out_the_client(simulator: Simulator) -> None:
    simulator.hang_next(1.0)
    with (
        openai.OpenAI(base_url=simulator.url, api_key=KEY, max_retries=0, timeout=0.2) as c,
        pytest.raises(openai.APITimeoutError),
    ):
        c.models.list()


async def test_hang_shorter_than_timeout_still_answers(
    simulator: Simulator, aclient: openai.AsyncOpenAI
) -> None:
    simulator.hang_next(0.2)
    started = time.perf_counter()
    await aclient.models.list()
    assert time.perf_counter() - started >= 0.2


@pytest.mark.parametrize("reset", [False, True])
def test_closed_connection(simulator: Simulator, client: openai.OpenAI, reset: bool) -> None:
    simulator.close_next(reset=reset)
    with pytest.raises(openai.APIConnectionError):
        client.embeddings.create(model=EMBED_MODEL, input="x")
    assert simulator.calls[0].status is None
    client.embeddings.create(model=EMBED_MODEL, input="x")  # the next call is fine


async def test_cut_stream(simulator: Simulator, aclient: openai.AsyncOpenAI) -> None:
    simulator.cut_stream_next(3)
    stream = await aclient.chat.completions.create(
        model=CHAT_MODEL,
        messages=_user("one two three"),
        stream=True,
        stream_options={"include_usage": True},
    )
    received: list[ChatCompletionChunk] = []

    async def drain() -> None:
        async for chunk in stream:
            received.append(chunk)

    with pytest.raises(openai.APIConnectionError):
        await drain()
    assert len(received) == 3
    assert all(c.usage is None for c in received)


def test_cut_non_streamed_answer(simulator: Simulator, client: openai.OpenAI) -> None:
    simulator.cut_stream_next(0, endpoint="embeddings")
    with pytest.raises(openai.APIConnectionError):
        client.embeddings.create(model=EMBED_MODEL, input="x")


def test_latency(simulator: Simulator, client: openai.OpenAI) -> None:
    simulator.configure(latency_ms=50, per_input_latency_ms=10)
    started = time.perf_counter()
    client.embeddings.create(model=EMBED_MODEL, input=["a", "b", "c", "d", "e"])
    assert time.perf_counter() - started >= 0.1


# ---- auth, counters, control API -----------------------------------------------------------------


async def test_auth_required(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    simulator.configure(require_auth=True, api_keys=[KEY])
    async with http.get(f"{simulator.url}/models") as response:
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    async with openai.AsyncOpenAI(base_url=simulator.url, api_key="sk-wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            await c.models.list()
    async with openai.AsyncOpenAI(base_url=simulator.url, api_key=KEY, max_retries=0) as c:
        await c.models.list()
    assert [c.authorization for c in simulator.calls] == [None, "Bearer sk-wrong", f"Bearer {KEY}"]


def test_counters_and_call_log(simulator: Simulator, client: openai.OpenAI) -> None:
    with openai.OpenAI(base_url=simulator.url, api_key="sk-beta", max_retries=0) as other:
        client.embeddings.create(model=EMBED_MODEL, input=["a", "b"])
        other.embeddings.create(model=EMBED_MODEL, input="c")
        client.chat.completions.create(model=CHAT_MODEL, messages=_user("x"))

    stats = simulator.stats
    assert stats.total_calls == 3
    assert stats.calls_by_endpoint == {"embeddings": 2, "chat": 1}
    assert stats.inputs_by_endpoint == {"embeddings": 3, "chat": 1}
    assert stats.authorizations == {f"Bearer {KEY}", "Bearer sk-beta"}
    assert [c.n_inputs for c in stats.calls_for("embeddings")] == [2, 1]
    assert stats.calls[2].model == CHAT_MODEL
    assert stats.calls[2].inputs == [_user("x")]

    simulator.reset()
    assert simulator.stats.total_calls == 0


async def test_http_control_api(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    root = simulator.root_url
    async with http.post(f"{root}/_sim/configure", json={"default_dimensions": 4}) as response:
        assert (await response.json())["config"]["default_dimensions"] == 4
    async with http.post(f"{root}/_sim/configure", json={"bogus": 1}) as response:
        assert response.status == 400
    async with http.post(
        f"{root}/_sim/fail", json={"status": 429, "endpoint": "embeddings", "retry_after": 1}
    ) as response:
        assert response.status == 200

    async with openai.AsyncOpenAI(base_url=simulator.url, api_key=KEY, max_retries=0) as c:
        with pytest.raises(openai.RateLimitError):
            await c.embeddings.create(model=EMBED_MODEL, input="x")
        result = await c.embeddings.create(model=EMBED_MODEL, input="x")
    assert result.data[0].embedding == embedding_vector(EMBED_MODEL, "x", 4)

    async with http.get(f"{root}/_sim/stats") as response:
        stats = await response.json()
    assert stats["calls_by_endpoint"] == {"embeddings": 2}
    assert [c["status"] for c in stats["calls"]] == [429, 200]
    assert stats["calls"][0]["fault"] == "status"

    async with http.post(f"{root}/_sim/reset") as response:
        assert response.status == 200
    assert simulator.stats.total_calls == 0
    assert simulator.config.default_dimensions == 16


# ---- other ways to run it ------------------------------------------------------------------------


async def test_simulator_on_the_callers_loop() -> None:
    sim = Simulator(SimConfig(default_dimensions=3))
    url = await sim.start()
    try:
        async with openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0) as c:
            result = await c.embeddings.create(model=EMBED_MODEL, input="x")
        assert result.data[0].embedding == embedding_vector(EMBED_MODEL, "x", 3)
    finally:
        await sim.stop()


def test_simulator_thread_context_manager() -> None:
    with (
        SimulatorThread(latency_ms=1) as sim,
        openai.OpenAI(base_url=sim.url, api_key=KEY, max_retries=0) as c,
    ):
        assert c.models.list().data
        assert sim.stats.total_calls == 1


def test_standalone_process() -> None:
    command = [sys.executable, "-m", "tests.support.simulator", "--port", "0", "--latency-ms", "1"]
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.endswith("/v1")
            with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
                assert orjson.loads(response.read())["object"] == "list"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert proc.returncode == 0
