"""The per-input embeddings cache with a fake upstream: partial hits, order, usage, flights."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from sluice.api import CacheConfig
from sluice.proxy.cache import memory
from sluice.proxy.http import errors
from sluice.proxy.http.asgi import Reply, Request
from sluice.proxy.llm import embeddings

MODEL = "text-embedding-3-small"


def vector(item: Any) -> list[float]:
    return [float(len(str(item))), float(sum(map(ord, str(item))) % 97)]


class Upstream:
    """A fake `fetch_embeddings`: one vector per input, shuffled order, usage of 1 per input."""

    def __init__(self) -> None:
        self.sent: list[list[Any]] = []
        self.gate: asyncio.Event | None = None
        self.status = 200
        self.answer_count: int | None = None

    async def __call__(self, request: Request, payload: dict[str, Any]) -> Reply:
        assert orjson.loads(request.body) == payload  # the sub-request is what goes upstream
        self.sent.append(payload["input"])
        if self.gate is not None:
            await self.gate.wait()
        if self.status != 200:
            return Reply(self.status, [], b'{"error":{"message":"bad"}}')
        inputs = payload["input"][: self.answer_count]
        data = [
            {"object": "embedding", "index": i, "embedding": vector(x)}
            for i, x in enumerate(inputs)
        ]
        answer = {
            "object": "list",
            "data": data[::-1],
            "model": MODEL + "-v1",
            "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
        }
        return Reply(200, [], orjson.dumps(answer))


def make() -> embeddings.EmbeddingCache:
    settings = CacheConfig()
    store = memory.MemoryCache(1000, 1_000_000, "sluice:")
    return embeddings.EmbeddingCache(settings, store)


async def embed(
    cache: embeddings.EmbeddingCache, upstream: Upstream, inputs: Any, **options: Any
) -> tuple[Reply, dict[str, Any]]:
    payload = {"model": MODEL, "input": inputs, **options}
    request = Request("POST", "/v1/embeddings", b"", [], orjson.dumps(payload))
    reply = await cache.answer(request, "tenant-a", payload, upstream)
    return reply, orjson.loads(reply.body)


def result(reply: Reply) -> bytes | None:
    return dict(reply.headers).get(b"x-sluice-cache")


async def test_partial_hits_send_only_the_misses_and_answer_every_input_in_order() -> None:
    cache, upstream = make(), Upstream()
    await embed(cache, upstream, [f"text {i}" for i in range(0, 100, 10)])
    inputs = [f"text {i}" for i in range(100)]
    reply, answer = await embed(cache, upstream, inputs)
    assert upstream.sent[1] == [x for x in inputs if int(x.split()[1]) % 10]
    assert [d["index"] for d in answer["data"]] == list(range(100))
    assert [d["embedding"] for d in answer["data"]] == [vector(x) for x in inputs]
    assert answer["usage"] == {"prompt_tokens": 90, "total_tokens": 90}
    assert answer["model"] == MODEL + "-v1"
    assert result(reply) == b"miss"


async def test_a_full_hit_makes_no_call_reports_zero_tokens_and_an_age() -> None:
    cache, upstream = make(), Upstream()
    await embed(cache, upstream, ["a", "b"])
    reply, answer = await embed(cache, upstream, ["b", "a", "b"])
    assert len(upstream.sent) == 1
    assert [d["embedding"] for d in answer["data"]] == [vector("b"), vector("a"), vector("b")]
    assert answer["usage"]["prompt_tokens"] == 0
    assert answer["model"] == MODEL
    assert result(reply) == b"hit"
    assert dict(reply.headers)[b"age"] == b"0"


async def test_duplicates_within_a_request_are_sent_once() -> None:
    cache, upstream = make(), Upstream()
    _, answer = await embed(cache, upstream, ["x", "y", "x"])
    assert upstream.sent == [["x", "y"]]
    assert [d["embedding"] for d in answer["data"]] == [vector("x"), vector("y"), vector("x")]


async def test_inputs_and_options_are_cached_apart() -> None:
    cache, upstream = make(), Upstream()
    await embed(cache, upstream, "one")
    await embed(cache, upstream, ["one"], dimensions=8)
    await embed(cache, upstream, [[1, 2, 3]])
    await embed(cache, upstream, [1, 2, 3])  # one token array: the same input as above
    assert upstream.sent == [["one"], ["one"], [[1, 2, 3]]]


@pytest.mark.parametrize("inputs", [[], "", ["a", ""], [["a"]], [True]])
async def test_inputs_of_a_shape_not_to_cache_go_upstream_as_they_are(inputs: Any) -> None:
    cache, upstream = make(), Upstream()
    payload = {"model": MODEL, "input": inputs}
    request = Request("POST", "/v1/embeddings", b"", [], orjson.dumps(payload))
    reply = await cache.answer(request, "tenant-a", payload, upstream)
    assert result(reply) == b"bypass"


async def test_an_upstream_error_is_returned_and_nothing_is_stored() -> None:
    cache, upstream = make(), Upstream()
    upstream.status = 400
    reply, _ = await embed(cache, upstream, ["a"])
    assert reply.status == 400
    upstream.status = 200
    reply, _ = await embed(cache, upstream, ["a"])
    assert result(reply) == b"miss"


async def test_an_answer_missing_vectors_is_a_502() -> None:
    cache, upstream = make(), Upstream()
    upstream.answer_count = 1
    with pytest.raises(errors.ProxyError) as caught:
        await embed(cache, upstream, ["a", "b"])
    assert caught.value.status == 502
    assert len(cache.flights) == 0


async def test_concurrent_misses_of_one_input_make_one_upstream_call() -> None:
    cache, upstream = make(), Upstream()
    upstream.gate = asyncio.Event()
    tasks = [asyncio.create_task(embed(cache, upstream, ["shared", f"own {i}"])) for i in range(5)]
    await asyncio.sleep(0.01)
    upstream.gate.set()
    answers = await asyncio.gather(*tasks)
    assert sum(x == "shared" for sent in upstream.sent for x in sent) == 1
    assert all(a["data"][0]["embedding"] == vector("shared") for _, a in answers)
    assert sum(a["usage"]["prompt_tokens"] for _, a in answers) == 6  # what was billed


async def test_an_answer_that_is_not_json_is_a_502_upstream_bad_answer() -> None:
    cache = make()

    async def garbled(request: Request, payload: dict[str, Any]) -> Reply:
        return Reply(200, [], b"<html>oops</html>")

    with pytest.raises(errors.ProxyError) as caught:
        await cache.answer(
            Request("POST", "/v1/embeddings", b"", [], b"{}"),
            "tenant-a",
            {"model": MODEL, "input": ["a"]},
            garbled,
        )
    assert (caught.value.status, caught.value.code) == (502, "upstream_bad_answer")


async def test_a_no_cache_request_neither_follows_nor_lands_another_requests_flight() -> None:
    cache, upstream = make(), Upstream()
    upstream.gate = asyncio.Event()
    sharing = asyncio.create_task(embed(cache, upstream, ["x"]))
    await asyncio.sleep(0.01)
    payload = {"model": MODEL, "input": ["x"]}
    fresh = Request("POST", "/v1/embeddings", b"", [(b"cache-control", b"no-cache")], b"")
    alone = asyncio.create_task(
        cache.answer(
            Request(fresh.method, fresh.path, b"", fresh.headers, orjson.dumps(payload)),
            "tenant-a",
            payload,
            upstream,
        )
    )
    await asyncio.sleep(0.01)
    assert len(upstream.sent) == 2  # `no-cache` made its own call
    assert len(cache.flights) == 1  # only the sharing request's own flight
    upstream.gate.set()
    (_, shared), own = await asyncio.gather(sharing, alone)
    assert shared["data"][0]["embedding"] == orjson.loads(own.body)["data"][0]["embedding"]
    assert len(cache.flights) == 0
