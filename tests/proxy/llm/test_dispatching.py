"""The batching layer against a fake upstream: isolation of bad inputs, tenants, chat sharing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from sluice.api import BatchingSettings
from sluice.proxy.http import callers, errors
from sluice.proxy.http.asgi import JSON_HEADERS, Headers, Reply, Request
from sluice.proxy.llm import dispatching


class FakeUpstream:
    """`forward` of an upstream that embeds each text as [len(text)] and refuses "bad"."""

    def __init__(self, status: int = 200, delay: float = 0.01) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.callers: list[callers.Caller] = []
        self.status = status
        self.delay = delay
        self.cancelled = 0

    async def __call__(
        self,
        kind: str,
        request: Request,
        caller: callers.Caller,
        *,
        streaming: bool,
        body: bytes | None = None,
    ) -> Reply:
        sent = orjson.loads(request.body if body is None else body)
        self.bodies.append(sent)
        self.callers.append(caller)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if kind == "chat_completions":
            return Reply(
                200, [*JSON_HEADERS, (b"x-request-id", b"r1")], b'{"n": %d}' % len(self.bodies)
            )
        texts = sent["input"] if isinstance(sent["input"], list) else [sent["input"]]
        if self.status != 200:
            return Reply(self.status, list(JSON_HEADERS), b'{"error": {"message": "down"}}')
        if "bad" in texts:
            error = {"error": {"message": "bad input", "param": "input", "code": None}}
            return Reply(400, list(JSON_HEADERS), orjson.dumps(error))
        data = [{"index": i, "embedding": [len(t)]} for i, t in reversed(list(enumerate(texts)))]
        answer = {
            "data": data,
            "model": sent["model"],
            "usage": {"prompt_tokens": 10, "total_tokens": 10},
        }
        return Reply(200, list(JSON_HEADERS), orjson.dumps(answer))


def request(
    payload: dict[str, Any], path: str = "/v1/embeddings", headers: Headers | None = None
) -> Request:
    return Request("POST", path, b"", headers or [], orjson.dumps(payload))


def caller(key: str = "k1") -> callers.Caller:
    return callers.Caller(
        {"authorization": f"Bearer {key}"}, callers.digest(key), callers.digest(key)
    )


async def embed(
    dispatcher: dispatching.Dispatcher, text: Any, key: str = "k1", **options: Any
) -> Reply:
    payload = {"model": "m", "input": text, **options}
    return await dispatcher.embeddings(request(payload), caller(key), payload)


@pytest.fixture
async def dispatcher_of() -> AsyncIterator[Any]:
    made: list[dispatching.Dispatcher] = []

    def make(
        upstream: FakeUpstream, patience: float | None = None, **settings: Any
    ) -> dispatching.Dispatcher:
        config = BatchingSettings(**{"max_wait_milliseconds": 20, **settings})
        dispatcher = dispatching.Dispatcher(config, upstream, patience=patience)
        dispatcher.start()
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        await dispatcher.stop()


def vectors(reply: Reply) -> list[list[int]]:
    assert reply.status == 200, reply.body
    data = orjson.loads(reply.body)["data"]
    assert [row["index"] for row in data] == list(range(len(data)))
    return [row["embedding"] for row in data]


async def test_concurrent_requests_become_one_call_and_each_gets_its_own_vectors(
    dispatcher_of: Any,
) -> None:
    upstream = FakeUpstream()
    dispatcher = dispatcher_of(upstream)
    texts: list[Any] = ["a", ["bb", "ccc"], "dddd"]
    replies = await asyncio.gather(*(embed(dispatcher, t) for t in texts))
    assert [vectors(r) for r in replies] == [[[1]], [[2], [3]], [[4]]]
    assert upstream.bodies == [{"model": "m", "input": ["a", "bb", "ccc", "dddd"]}]
    assert sum(orjson.loads(r.body)["usage"]["prompt_tokens"] for r in replies) == 10


async def test_a_lone_request_is_sent_and_answered_exactly_as_written(dispatcher_of: Any) -> None:
    upstream = FakeUpstream()
    dispatcher = dispatcher_of(upstream, max_wait_milliseconds=0)
    reply = await embed(dispatcher, "xyz", dimensions=4)
    assert upstream.bodies == [{"model": "m", "input": "xyz", "dimensions": 4}]
    assert orjson.loads(reply.body)["usage"] == {"prompt_tokens": 10, "total_tokens": 10}


async def test_a_refused_input_fails_only_its_caller_with_the_upstreams_own_answer(
    dispatcher_of: Any,
) -> None:
    upstream = FakeUpstream()
    dispatcher = dispatcher_of(upstream)
    texts = ["a", "bb", "bad", "cccc", "ddddd", "e", "ff", "ggg"]
    replies = await asyncio.gather(*(embed(dispatcher, t) for t in texts))
    assert [r.status for r in replies] == [200, 200, 400, 200, 200, 200, 200, 200]
    assert orjson.loads(replies[2].body)["error"]["message"] == "bad input"
    assert [vectors(r) for i, r in enumerate(replies) if i != 2] == [
        [[len(t)]] for t in texts if t != "bad"
    ]
    # 1 merged call, then halves: [a bb bad cccc] fails, [ddddd e ff ggg] succeeds; and so on.
    assert len(upstream.bodies) == 7
    assert {"model": "m", "input": "bad"} in upstream.bodies  # the bad one alone, as it wrote it


async def test_server_errors_go_to_every_caller_of_the_batch(dispatcher_of: Any) -> None:
    upstream = FakeUpstream(status=503)
    dispatcher = dispatcher_of(upstream)
    replies = await asyncio.gather(*(embed(dispatcher, t) for t in ("a", "b", "c")))
    assert [r.status for r in replies] == [503, 503, 503]
    assert len(upstream.bodies) == 1


async def test_two_api_keys_never_share_a_call(dispatcher_of: Any) -> None:
    upstream = FakeUpstream()
    dispatcher = dispatcher_of(upstream)
    replies = await asyncio.gather(
        *(embed(dispatcher, "x" * n, key=f"k{n % 2}") for n in range(1, 7))
    )
    assert [vectors(r) for r in replies] == [[[n]] for n in range(1, 7)]
    assert len(upstream.bodies) == 2
    for body, who in zip(upstream.bodies, upstream.callers, strict=True):
        parity = int(who.headers["authorization"][-1])
        assert all(len(text) % 2 == parity for text in body["input"])


async def test_requests_that_differ_in_options_or_input_kind_go_apart(dispatcher_of: Any) -> None:
    upstream = FakeUpstream()
    dispatcher = dispatcher_of(upstream)
    await asyncio.gather(
        embed(dispatcher, "a", encoding_format="base64"),
        embed(dispatcher, "b"),
        embed(dispatcher, "c", encoding_format="float"),
        embed(dispatcher, "d", dimensions=8),
        embed(dispatcher, [[1, 2]]),
    )
    inputs = sorted(str(b["input"]) for b in upstream.bodies)
    assert inputs == ["['b', 'c']", "[[1, 2]]", "a", "d"]


async def test_batching_off_is_one_call_per_request(dispatcher_of: Any) -> None:
    upstream = FakeUpstream()
    dispatcher = dispatcher_of(upstream, enabled=False)
    await asyncio.gather(*(embed(dispatcher, t) for t in ("a", "b", "c")))
    assert len(upstream.bodies) == 3


# --- chat -------------------------------------------------------------------------------------


async def chat(dispatcher: dispatching.Dispatcher, key: str = "k1", **options: Any) -> Reply:
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **options}
    req = request(payload, "/v1/chat/completions")
    return await dispatcher.chat(req, caller(key), payload)


@pytest.mark.parametrize(
    ("share", "options", "calls"),
    [
        pytest.param("deterministic", {"temperature": 0}, 1, id="temperature 0 is shared"),
        pytest.param("deterministic", {"seed": 7, "temperature": 1}, 1, id="a seed is shared"),
        pytest.param("deterministic", {}, 3, id="the default temperature is not"),
        pytest.param("deterministic", {"temperature": 0.7}, 3, id="sampling is not"),
        pytest.param("always", {"temperature": 0.7}, 1, id="always shares everything"),
        pytest.param("off", {"temperature": 0}, 3, id="off shares nothing"),
    ],
)
async def test_identical_chat_requests_in_flight_share_one_call_when_allowed(
    dispatcher_of: Any, share: str, options: dict[str, Any], calls: int
) -> None:
    upstream = FakeUpstream()
    dispatcher = dispatcher_of(upstream, share_chat=share)
    replies = await asyncio.gather(*(chat(dispatcher, **options) for _ in range(3)))
    assert len(upstream.bodies) == calls
    if calls == 1:
        launcher, *followers = replies
        assert (b"x-sluice-cache", b"shared") not in launcher.headers
        for reply in followers:
            assert reply.headers == [*launcher.headers, (b"x-sluice-cache", b"shared")]
            assert (reply.status, reply.body) == (launcher.status, launcher.body)
        assert len({id(r.headers) for r in replies}) == 3  # each may add its own headers


async def test_chat_of_two_tenants_or_of_streams_is_never_shared(dispatcher_of: Any) -> None:
    upstream = FakeUpstream()
    dispatcher = dispatcher_of(upstream)
    await asyncio.gather(
        chat(dispatcher, "k1", temperature=0), chat(dispatcher, "k2", temperature=0)
    )
    assert len(upstream.bodies) == 2


async def test_a_full_chat_queue_answers_429(dispatcher_of: Any) -> None:
    upstream = FakeUpstream(delay=0.05)
    dispatcher = dispatcher_of(upstream, max_batch_size=1, max_concurrent_batches=1, max_queue=1)
    outcomes = await asyncio.gather(
        *(chat(dispatcher, content=str(n)) for n in range(3)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, errors.ProxyError)]
    assert [e.status for e in refused] == [429]
    assert len(upstream.bodies) == 2


async def test_a_no_cache_chat_never_lands_another_requests_flight(dispatcher_of: Any) -> None:
    upstream = FakeUpstream()
    dispatcher = dispatcher_of(upstream)
    payload = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    fresh = request(payload, "/v1/chat/completions", [(b"cache-control", b"no-cache")])
    plain = request(payload, "/v1/chat/completions")
    replies = await asyncio.gather(
        dispatcher.chat(plain, caller(), payload), dispatcher.chat(fresh, caller(), payload)
    )
    assert len(upstream.bodies) == 2
    assert all((b"x-sluice-cache", b"shared") not in r.headers for r in replies)


async def test_a_follower_waits_on_a_slow_flight_a_bounded_time_then_calls_itself(
    dispatcher_of: Any,
) -> None:
    upstream = FakeUpstream(delay=0.5)
    dispatcher = dispatcher_of(upstream, patience=0.05)
    leader = asyncio.create_task(chat(dispatcher, temperature=0))
    await asyncio.sleep(0.01)
    follower = await chat(dispatcher, temperature=0)
    assert (b"x-sluice-cache", b"shared") not in follower.headers  # it made its own call
    assert len(upstream.bodies) == 2
    assert (await leader).status == 200


async def test_the_last_caller_of_a_chat_flight_to_leave_cancels_its_upstream_call(
    dispatcher_of: Any,
) -> None:
    upstream = FakeUpstream(delay=5)
    dispatcher = dispatcher_of(upstream)
    callers_ = [asyncio.create_task(chat(dispatcher, temperature=0)) for _ in range(2)]
    await asyncio.sleep(0.02)
    callers_[0].cancel()
    await asyncio.sleep(0.02)
    assert upstream.cancelled == 0  # the other caller still waits on it
    callers_[1].cancel()
    await asyncio.sleep(0.02)
    assert upstream.cancelled == 1
    assert dispatcher.limiters[dispatching.CHAT].busy == 0


async def test_a_caller_that_leaves_a_batch_not_yet_sent_takes_its_input_out(
    dispatcher_of: Any,
) -> None:
    upstream = FakeUpstream()
    dispatcher = dispatcher_of(upstream, max_wait_milliseconds=100)
    leaving = asyncio.create_task(embed(dispatcher, "gone"))
    staying = asyncio.create_task(embed(dispatcher, "kept"))
    await asyncio.sleep(0.01)
    leaving.cancel()
    assert vectors(await staying) == [[4]]
    assert upstream.bodies == [{"model": "m", "input": "kept"}]
    assert dispatcher.embedder is not None
    assert dispatcher.embedder.queue.pending == 0


async def test_a_batch_in_flight_whose_callers_all_left_is_cancelled(dispatcher_of: Any) -> None:
    upstream = FakeUpstream(delay=5)
    dispatcher = dispatcher_of(upstream, max_wait_milliseconds=1)
    waiting = [asyncio.create_task(embed(dispatcher, t)) for t in ("a", "b")]
    await asyncio.sleep(0.05)
    assert len(upstream.bodies) == 1  # sent, as one call
    waiting[0].cancel()
    await asyncio.sleep(0.01)
    assert upstream.cancelled == 0
    waiting[1].cancel()
    await asyncio.sleep(0.01)
    assert upstream.cancelled == 1
