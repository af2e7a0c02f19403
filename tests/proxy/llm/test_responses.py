"""The chat/completions response cache on a fake upstream: policy, hits, streams, single-flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from sluice.api import CacheConfig
from sluice.proxy.cache import memory
from sluice.proxy.http import asgi, errors
from sluice.proxy.http.asgi import Reply, Request
from sluice.proxy.llm import responses

ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello world"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}
STREAM = [
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    b'[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    b'[{"index":0,"delta":{"content":" world"},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


class Upstream:
    """A fake `fetch_chat`: counts calls; answers JSON or SSE; can be held, cut or failed."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.status = 200
        self.cut = False
        """Cut the next stream short (once)."""
        self.raises: Exception | None = None

    async def __call__(self, request: Request, payload: dict[str, Any]) -> Reply:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.raises is not None:
            raise self.raises
        if payload.get("stream"):
            cut, self.cut = self.cut, False
            return Reply(self.status, [], stream=self.chunks(cut))
        body = orjson.dumps(ANSWER if self.status == 200 else {"error": {"message": "no"}})
        return Reply(self.status, [(b"x-upstream", b"1")], body)

    async def chunks(self, cut: bool) -> AsyncIterator[bytes]:
        for chunk in STREAM[:1] if cut else STREAM:
            yield chunk


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(**config: Any) -> tuple[responses.ResponseCache, Clock]:
    clock = Clock()
    settings = CacheConfig.model_validate(config)
    store = memory.MemoryCache(settings.max_entries, settings.max_bytes, "sluice:")
    return responses.ResponseCache(settings, store, clock=clock), clock


def request(headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request("POST", "/v1/chat/completions", b"", headers or [], b"")


PAYLOAD = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0,
}


async def ask(
    cache: responses.ResponseCache,
    upstream: Upstream,
    payload: dict[str, Any] = PAYLOAD,
    headers: list[tuple[bytes, bytes]] | None = None,
    tenant: str = "tenant-a",
) -> tuple[Reply, bytes]:
    reply = await cache.answer("chat", request(headers), tenant, dict(payload), upstream)
    if reply.stream is None:
        return reply, reply.body
    body = b"".join([chunk async for chunk in reply.stream])
    await asgi.aclose(reply.stream)
    return reply, body


def header(reply: Reply, name: bytes) -> bytes | None:
    return dict(reply.headers).get(name)


async def test_a_miss_is_stored_and_the_next_request_is_a_hit_with_age() -> None:
    cache, clock = make()
    upstream = Upstream()
    first, body = await ask(cache, upstream)
    assert header(first, b"x-sluice-cache") == b"miss"
    clock.now += 42
    second, again = await ask(cache, upstream)
    assert header(second, b"x-sluice-cache") == b"hit"
    assert header(second, b"age") == b"42"
    assert again == body
    assert upstream.calls == 1


@pytest.mark.parametrize(
    ("config", "payload"),
    [
        pytest.param({"mode": "off"}, PAYLOAD, id="mode-off"),
        pytest.param({}, {**PAYLOAD, "temperature": 0.7}, id="not-deterministic"),
        pytest.param({"ttlSeconds": {"chat": 0}}, PAYLOAD, id="ttl-0"),
    ],
)
async def test_requests_not_to_cache_are_bypassed(
    config: dict[str, Any], payload: dict[str, Any]
) -> None:
    cache, _ = make(**config)
    upstream = Upstream()
    for _ in range(2):
        reply, _ = await ask(cache, upstream, payload)
        assert header(reply, b"x-sluice-cache") == b"bypass"
    assert upstream.calls == 2


async def test_mode_always_caches_sampled_requests() -> None:
    cache, _ = make(mode="always")
    upstream = Upstream()
    await ask(cache, upstream, {**PAYLOAD, "temperature": 1, "n": 2})
    reply, _ = await ask(cache, upstream, {**PAYLOAD, "temperature": 1, "n": 2})
    assert header(reply, b"x-sluice-cache") == b"hit"


async def test_no_store_reads_but_does_not_write_and_no_cache_writes_but_does_not_read() -> None:
    cache, _ = make()
    upstream = Upstream()
    reply, _ = await ask(cache, upstream, headers=[(b"cache-control", b"no-store")])
    assert header(reply, b"x-sluice-cache") == b"miss"
    reply, _ = await ask(cache, upstream, headers=[(b"cache-control", b"no-cache")])
    assert header(reply, b"x-sluice-cache") == b"bypass"
    reply, _ = await ask(cache, upstream)
    assert header(reply, b"x-sluice-cache") == b"hit"
    reply, _ = await ask(cache, upstream, headers=[(b"cache-control", b"no-store")])
    assert header(reply, b"x-sluice-cache") == b"hit"
    assert upstream.calls == 2


async def test_tenants_do_not_share_entries_unless_configured() -> None:
    cache, _ = make()
    upstream = Upstream()
    await ask(cache, upstream, tenant="a")
    reply, _ = await ask(cache, upstream, tenant="b")
    assert header(reply, b"x-sluice-cache") == b"miss"
    shared, _ = make(shareAcrossTenants=True)
    await ask(shared, upstream, tenant="a")
    reply, _ = await ask(shared, upstream, tenant="b")
    assert header(reply, b"x-sluice-cache") == b"hit"


async def test_errors_are_not_stored() -> None:
    cache, _ = make()
    upstream = Upstream()
    upstream.status = 400
    reply, _ = await ask(cache, upstream)
    assert reply.status == 400
    upstream.status = 200
    reply, _ = await ask(cache, upstream)
    assert header(reply, b"x-sluice-cache") == b"miss"


async def test_a_streamed_miss_passes_through_is_stored_and_serves_a_streamed_hit() -> None:
    cache, _ = make()
    upstream = Upstream()
    streamed = {**PAYLOAD, "stream": True}
    reply, body = await ask(cache, upstream, streamed)
    assert body == b"".join(STREAM)
    assert header(reply, b"x-sluice-cache") == b"miss"
    reply, replayed = await ask(cache, upstream, streamed)
    assert header(reply, b"x-sluice-cache") == b"hit"
    assert (header(reply, b"content-type") or b"").startswith(b"text/event-stream")
    assert b'"content":"Hello world"' in replayed
    assert replayed.endswith(b"data: [DONE]\n\n")
    assert upstream.calls == 1


async def test_a_stream_without_usage_does_not_serve_a_request_that_needs_usage() -> None:
    cache, _ = make()
    upstream = Upstream()
    await ask(cache, upstream, {**PAYLOAD, "stream": True})
    reply, _ = await ask(cache, upstream)  # a non-streamed answer always carries usage
    assert header(reply, b"x-sluice-cache") == b"miss"
    reply, _ = await ask(cache, upstream, {**PAYLOAD, "stream": True})
    assert header(reply, b"x-sluice-cache") == b"hit"  # now served from the fuller answer
    assert upstream.calls == 2


async def test_a_non_streamed_answer_serves_a_streamed_request_with_its_usage() -> None:
    cache, _ = make()
    upstream = Upstream()
    await ask(cache, upstream)
    options = {"stream": True, "stream_options": {"include_usage": True}}
    reply, replayed = await ask(cache, upstream, {**PAYLOAD, **options})
    assert header(reply, b"x-sluice-cache") == b"hit"
    last = replayed.split(b"\n\n")[-3].removeprefix(b"data: ")
    assert orjson.loads(last)["choices"] == []
    assert orjson.loads(last)["usage"]["total_tokens"] == 3


async def test_a_cut_stream_is_not_stored() -> None:
    cache, _ = make()
    upstream = Upstream()
    upstream.cut = True
    await ask(cache, upstream, {**PAYLOAD, "stream": True})
    reply, _ = await ask(cache, upstream, {**PAYLOAD, "stream": True})
    assert header(reply, b"x-sluice-cache") == b"miss"


async def test_concurrent_identical_misses_make_one_upstream_call() -> None:
    cache, _ = make()
    upstream = Upstream()
    upstream.gate = asyncio.Event()
    shapes = [PAYLOAD, {**PAYLOAD, "stream": True}] * 10
    tasks = [asyncio.create_task(ask(cache, upstream, p)) for p in shapes]
    await asyncio.sleep(0.01)
    upstream.gate.set()
    answers = await asyncio.gather(*tasks)
    assert upstream.calls == 1
    assert all(reply.status == 200 for reply, _ in answers)
    assert len(cache.flights) == 0


async def test_followers_share_the_leaders_error_and_retry_after_a_broken_stream() -> None:
    cache, _ = make()
    upstream = Upstream()
    upstream.gate = asyncio.Event()
    upstream.raises = errors.upstream_timeout(1)
    tasks = [asyncio.create_task(ask(cache, upstream)) for _ in range(3)]
    await asyncio.sleep(0.01)
    upstream.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], errors.ProxyError)
    assert [r[0].status for r in results[1:]] == [504, 504]  # type: ignore[index]
    assert upstream.calls == 1

    upstream.raises = None
    upstream.cut = True
    upstream.gate.clear()
    streamed = {**PAYLOAD, "stream": True}
    tasks = [asyncio.create_task(ask(cache, upstream, streamed)) for _ in range(2)]
    await asyncio.sleep(0.01)
    upstream.gate.set()  # the leader's stream is cut; its follower leads a second try
    await asyncio.gather(*tasks)
    assert upstream.calls == 3


async def test_a_streamed_leader_closed_before_its_first_chunk_releases_its_followers() -> None:
    cache, _ = make()
    upstream = Upstream()
    streamed = {**PAYLOAD, "stream": True}
    leader = await cache.answer("chat", request(), "tenant-a", dict(streamed), upstream)
    follower = asyncio.create_task(ask(cache, upstream, streamed))
    await asyncio.sleep(0.01)
    assert not follower.done()
    assert leader.stream is not None
    await asgi.aclose(leader.stream)  # the caller went away before the first byte
    _, body = await asyncio.wait_for(follower, 5)
    assert body.endswith(b"data: [DONE]\n\n")
    assert upstream.calls == 2


async def test_a_non_streamed_flight_goes_on_for_its_followers_when_its_first_caller_leaves() -> (
    None
):
    cache, _ = make()
    upstream = Upstream()
    upstream.gate = asyncio.Event()
    leader = asyncio.create_task(ask(cache, upstream))
    await asyncio.sleep(0.01)
    followers = [asyncio.create_task(ask(cache, upstream)) for _ in range(3)]
    await asyncio.sleep(0.01)
    leader.cancel()  # the first caller hangs up while the upstream is still working
    upstream.gate.set()
    answers = await asyncio.gather(*followers)
    assert [reply.status for reply, _ in answers] == [200, 200, 200]
    assert all(orjson.loads(body)["choices"] for _, body in answers)
    assert upstream.calls == 1
    assert leader.cancelled()
