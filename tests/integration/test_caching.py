"""Response caching end to end: openai client -> `sluice proxy` (memory, Redis, tiered) -> sim.

Batching is off in most configs so that every upstream call the simulator counts is the cache's
doing; one partial-embedding-hit case runs with batching on as well. Redis is a real
`redis-server` (tests/support/redis.py), killed and restarted for the fail-open test.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import orjson
import pytest

from tests.support.proxy import ProxyFactory, ProxyProcess, free_port
from tests.support.redis import RedisServer
from tests.support.simulator import Simulator, embedding_base64, embedding_vector

pytestmark = pytest.mark.integration

CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
BACKENDS = ["memory", "redis", "tiered"]
SHARED_BACKENDS = ["redis", "tiered"]


class Setup:
    """Starts proxies with one cache backend, against the test's simulator."""

    def __init__(
        self,
        backend: str,
        start_proxy: ProxyFactory,
        simulator: Simulator,
        redis: RedisServer | None,
    ) -> None:
        self.backend = backend
        self.start_proxy = start_proxy
        self.simulator = simulator
        self.redis = redis

    def proxy(
        self,
        cache: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        admin: dict[str, Any] | None = None,
        **llm: Any,
    ) -> ProxyProcess:
        config = {
            "llm": {
                "upstream": {"url": self.simulator.url, "retry": {"maxAttempts": 1}},
                "batching": {"enabled": False},
                "cache": {"backend": self.backend, **(cache or {})},
                **llm,
            },
            "admin": {"port": free_port(), **(admin or {})},
        }
        redis_env = {"REDIS_URL": self.redis.url} if self.redis is not None else {}
        return self.start_proxy(config, env={**redis_env, **(env or {})})


def make_setup(
    backend: str, request: pytest.FixtureRequest, start_proxy: ProxyFactory, simulator: Simulator
) -> Setup:
    redis = request.getfixturevalue("redis_server") if backend != "memory" else None
    return Setup(backend, start_proxy, simulator, redis)


@pytest.fixture(params=BACKENDS)
def setup(request: pytest.FixtureRequest, start_proxy: ProxyFactory, simulator: Simulator) -> Setup:
    return make_setup(request.param, request, start_proxy, simulator)


@pytest.fixture(params=SHARED_BACKENDS)
def shared_setup(
    request: pytest.FixtureRequest, start_proxy: ProxyFactory, simulator: Simulator
) -> Setup:
    return make_setup(request.param, request, start_proxy, simulator)


def client(proxy: ProxyProcess, key: str = "sk-alice") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url, api_key=key, max_retries=0)


async def chat(
    c: openai.AsyncOpenAI, content: str = "hello there", **options: Any
) -> tuple[str | None, str, dict[str, str]]:
    """(x-sluice-cache, answer text, headers) of one deterministic chat request."""
    raw = await c.chat.completions.with_raw_response.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        **options,
    )
    text = raw.parse().choices[0].message.content or ""
    return raw.headers.get("x-sluice-cache"), text, dict(raw.headers)


async def streamed_chat(
    c: openai.AsyncOpenAI, content: str = "hello there", include_usage: bool = True
) -> tuple[str | None, str, Any]:
    """(x-sluice-cache, text, usage) of one streamed chat request, parsed by the openai client."""
    raw = await c.chat.completions.with_raw_response.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    text, usage = "", None
    async for chunk in raw.parse():
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    return raw.headers.get("x-sluice-cache"), text, usage


# --- hits, TTL, bounds --------------------------------------------------------------------------


async def test_a_repeated_request_is_a_hit_with_the_same_answer(
    setup: Setup, simulator: Simulator
) -> None:
    proxy = setup.proxy()
    async with client(proxy) as c:
        first, text, _ = await chat(c)
        second, again, headers = await chat(c)
    assert (first, second) == ("miss", "hit")
    assert again == text
    assert int(headers["age"]) >= 0
    assert len(simulator.calls_for("chat")) == 1
    assert proxy.metric("sluice_cache_requests_total", cache="chat", result="hit") == 1
    assert proxy.metric("sluice_cache_requests_total", cache="chat", result="miss") == 1


async def test_completions_are_cached_too(setup: Setup, simulator: Simulator) -> None:
    proxy = setup.proxy()
    async with client(proxy) as c:
        results = []
        for _ in range(2):
            raw = await c.completions.with_raw_response.create(
                model="gpt-3.5-turbo-instruct", prompt="say this", temperature=0
            )
            results.append((raw.headers.get("x-sluice-cache"), raw.parse().choices[0].text))
    assert [r[0] for r in results] == ["miss", "hit"]
    assert results[0][1] == results[1][1]
    assert len(simulator.calls_for("completions")) == 1


async def test_sampled_requests_are_not_cached_by_default(
    setup: Setup, simulator: Simulator
) -> None:
    proxy = setup.proxy()
    async with client(proxy) as c:
        for _ in range(2):
            raw = await c.chat.completions.with_raw_response.create(
                model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], temperature=0.9
            )
            assert raw.headers.get("x-sluice-cache") == "bypass"
    assert len(simulator.calls_for("chat")) == 2


async def test_entries_expire_after_their_ttl(setup: Setup, simulator: Simulator) -> None:
    proxy = setup.proxy({"ttlSeconds": {"chat": 1}})
    async with client(proxy) as c:
        assert (await chat(c))[0] == "miss"
        assert (await chat(c))[0] == "hit"
        await asyncio.sleep(1.3)
        assert (await chat(c))[0] == "miss"
    assert len(simulator.calls_for("chat")) == 2


async def test_the_byte_bound_evicts_the_least_recently_used_entry(
    start_proxy: ProxyFactory, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    setup = make_setup("memory", request, start_proxy, simulator)
    # A simulator answer is ~600 bytes, its key ~80: two entries fit in 1,600 bytes, three do not.
    proxy = setup.proxy({"maxBytes": 1600})
    async with client(proxy) as c:
        for content in ("first", "second", "third"):
            assert (await chat(c, content))[0] == "miss"
        assert (await chat(c, "third"))[0] == "hit"
        assert (await chat(c, "second"))[0] == "hit"
        assert (await chat(c, "first"))[0] == "miss"
    deadline = time.monotonic() + 5  # evictions are exported by the once-a-second sweep
    while time.monotonic() < deadline:
        if proxy.metric("sluice_cache_evictions_total", backend="memory", reason="lru") >= 1:
            break
        await asyncio.sleep(0.2)
    assert proxy.metric("sluice_cache_evictions_total", backend="memory", reason="lru") >= 1
    assert proxy.metric("sluice_cache_bytes", backend="memory") <= 1600


# --- tenants and Cache-Control --------------------------------------------------------------------


async def test_two_api_keys_with_the_same_body_never_share_an_entry(
    setup: Setup, simulator: Simulator
) -> None:
    proxy = setup.proxy()
    async with client(proxy, "sk-alice") as alice, client(proxy, "sk-bob") as bob:
        assert (await chat(alice))[0] == "miss"
        assert (await chat(bob))[0] == "miss"
        assert (await chat(alice))[0] == "hit"
        assert (await chat(bob))[0] == "hit"
    assert simulator.stats.authorizations == {"Bearer sk-alice", "Bearer sk-bob"}
    assert len(simulator.calls_for("chat")) == 2


async def test_the_query_and_behaviour_headers_keep_answers_apart(
    setup: Setup, simulator: Simulator
) -> None:
    proxy = setup.proxy()
    async with client(proxy) as c:
        assert (await chat(c))[0] == "miss"
        assert (await chat(c, extra_query={"api-version": "2024-10-21"}))[0] == "miss"
        assert (await chat(c, extra_headers={"OpenAI-Beta": "assistants=v2"}))[0] == "miss"
        assert (await chat(c, extra_headers={"OpenAI-Project": "proj_b"}))[0] == "miss"
        assert (await chat(c, extra_query={"api-version": "2024-10-21"}))[0] == "hit"
        assert (await chat(c, extra_headers={"X-Anything-Else": "1"}))[0] == "hit"
    assert len(simulator.calls_for("chat")) == 4


async def test_a_tenant_header_separates_callers_sharing_one_key(
    setup: Setup, simulator: Simulator
) -> None:
    proxy = setup.proxy({"tenantHeader": "x-tenant"})
    async with client(proxy) as c:
        assert (await chat(c, extra_headers={"x-tenant": "acme"}))[0] == "miss"
        assert (await chat(c, extra_headers={"x-tenant": "globex"}))[0] == "miss"
        assert (await chat(c, extra_headers={"x-tenant": "acme"}))[0] == "hit"


def keyless_chat(proxy: ProxyProcess, tenant: str, content: str = "hello there") -> str | None:
    """x-sluice-cache of the `chat` request sent with the tenant header and no credentials."""
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": content}]}
    request = urllib.request.Request(
        f"{proxy.url}/chat/completions",
        data=orjson.dumps({**body, "temperature": 0}),
        headers={"content-type": "application/json", "x-tenant": tenant},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.headers.get("x-sluice-cache")


async def test_naming_a_tenant_without_credentials_opens_none_of_its_entries(
    setup: Setup, simulator: Simulator
) -> None:
    proxy = setup.proxy({"tenantHeader": "x-tenant"})
    async with client(proxy) as c:
        assert (await chat(c, extra_headers={"x-tenant": "acme"}))[0] == "miss"
    assert keyless_chat(proxy, "acme") == "miss"  # its own entry, not acme's
    assert len(simulator.calls_for("chat")) == 2


async def test_a_gateway_that_sends_only_the_tenant_header_can_be_trusted_by_choice(
    setup: Setup, simulator: Simulator
) -> None:
    proxy = setup.proxy({"tenantHeader": "x-tenant", "tenantHeaderRequiresKey": False})
    assert keyless_chat(proxy, "acme") == "miss"
    assert keyless_chat(proxy, "globex") == "miss"
    assert keyless_chat(proxy, "acme") == "hit"
    assert len(simulator.calls_for("chat")) == 2


async def test_no_store_is_not_written_and_no_cache_is_not_read(
    setup: Setup, simulator: Simulator
) -> None:
    proxy = setup.proxy()
    no_store = {"extra_headers": {"Cache-Control": "no-store"}}
    no_cache = {"extra_headers": {"Cache-Control": "no-cache"}}
    async with client(proxy) as c:
        assert (await chat(c, **no_store))[0] == "miss"
        assert (await chat(c, **no_store))[0] == "miss"  # the first one was not stored
        assert (await chat(c))[0] == "miss"
        assert (await chat(c))[0] == "hit"
        assert (await chat(c, **no_cache))[0] == "bypass"  # not read: a fresh upstream answer
        assert (await chat(c, **no_store))[0] == "hit"  # no-store still reads
    assert len(simulator.calls_for("chat")) == 4


# --- streaming ----------------------------------------------------------------------------------


async def test_a_streamed_hit_parses_to_the_same_text_and_usage(
    setup: Setup, simulator: Simulator
) -> None:
    simulator.configure(words_per_chunk=1)
    proxy = setup.proxy()
    async with client(proxy) as c:
        first, text, usage = await streamed_chat(c)
        second, again, replayed_usage = await streamed_chat(c)
        third, plain, _ = await chat(c)  # a non-streamed request shares the entry
        fourth, bare, no_usage = await streamed_chat(c, include_usage=False)
    assert (first, second, third, fourth) == ("miss", "hit", "hit", "hit")
    assert text
    assert again == text == plain == bare
    assert usage is not None
    assert replayed_usage == usage
    assert no_usage is None
    assert len(simulator.calls_for("chat")) == 1


async def test_a_non_streamed_answer_is_replayed_to_a_streamed_request(
    setup: Setup, simulator: Simulator
) -> None:
    proxy = setup.proxy()
    async with client(proxy) as c:
        _, text, _ = await chat(c)
        result, streamed, usage = await streamed_chat(c)
    assert (result, streamed) == ("hit", text)
    assert usage is not None
    assert usage.total_tokens > 0


async def test_an_interrupted_stream_is_not_stored(setup: Setup, simulator: Simulator) -> None:
    proxy = setup.proxy()
    simulator.cut_stream_next(2, endpoint="chat")
    async with client(proxy) as c:
        try:
            _, cut, _ = await streamed_chat(c)
        except openai.APIConnectionError:
            cut = ""
        result, whole, _ = await streamed_chat(c)
        again, _, _ = await streamed_chat(c)
    assert result == "miss"
    assert again == "hit"
    assert len(cut) < len(whole)
    assert len(simulator.calls_for("chat")) == 2


# --- embeddings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding",
    [
        pytest.param(openai.NOT_GIVEN, id="sdk-default"),  # asks for base64 and decodes it
        pytest.param("base64", id="base64"),
        pytest.param("float", id="float"),
    ],
)
async def test_partial_embedding_hits_return_the_exact_vectors_in_order(
    setup: Setup, simulator: Simulator, encoding: Any
) -> None:
    simulator.configure(shuffle_embeddings=True)
    proxy = setup.proxy()
    inputs = [f"input number {i}" for i in range(100)]
    async with client(proxy) as c:
        await c.embeddings.create(model=EMBED_MODEL, input=inputs[::10], encoding_format=encoding)
        raw = await c.embeddings.with_raw_response.create(
            model=EMBED_MODEL, input=inputs, encoding_format=encoding
        )
    answer = raw.parse()
    assert simulator.stats.inputs_by_endpoint["embeddings"] == 10 + 90
    assert [d.index for d in answer.data] == list(range(100))
    dims = simulator.config.default_dimensions
    expected = embedding_base64 if encoding == "base64" else embedding_vector
    assert [d.embedding for d in answer.data] == [expected(EMBED_MODEL, x, dims) for x in inputs]
    assert answer.usage.prompt_tokens == sum(
        len(x.split()) for x in inputs if int(x.split()[2]) % 10
    )
    assert raw.headers["x-sluice-cache"] == "miss"


async def test_partial_embedding_hits_go_through_the_batcher_when_batching_is_on(
    start_proxy: ProxyFactory, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    setup = make_setup("memory", request, start_proxy, simulator)
    proxy = setup.proxy(batching={"enabled": True})
    inputs = [f"text {i}" for i in range(20)]
    async with client(proxy) as c:
        await c.embeddings.create(model=EMBED_MODEL, input=inputs[:5])
        answers = await asyncio.gather(
            c.embeddings.create(model=EMBED_MODEL, input=inputs[:10]),
            c.embeddings.create(model=EMBED_MODEL, input=inputs[5:20]),
        )
        raw = await c.embeddings.with_raw_response.create(model=EMBED_MODEL, input=inputs)
    dims = simulator.config.default_dimensions
    assert [d.embedding for d in answers[0].data] == [
        embedding_vector(EMBED_MODEL, x, dims) for x in inputs[:10]
    ]
    assert [d.embedding for d in answers[1].data] == [
        embedding_vector(EMBED_MODEL, x, dims) for x in inputs[5:20]
    ]
    assert raw.headers["x-sluice-cache"] == "hit"
    assert [d.embedding for d in raw.parse().data] == [
        embedding_vector(EMBED_MODEL, x, dims) for x in inputs
    ]
    assert simulator.stats.inputs_by_endpoint["embeddings"] == 20  # each input went up once


# --- stampede protection --------------------------------------------------------------------------


async def test_fifty_concurrent_identical_misses_make_one_upstream_call(
    setup: Setup, simulator: Simulator
) -> None:
    simulator.configure(latency_ms=300)
    # A generous Redis timeout: 50 requests opening the pool's first connections at once on a
    # busy CI machine can exceed the 50 ms default, and a bypass (fail-open, tested elsewhere)
    # would fetch alone; this test is about single-flight.
    proxy = setup.proxy({"redis": {"timeoutMilliseconds": 2000}})
    async with client(proxy) as c:
        streamed = [streamed_chat(c) for _ in range(10)]
        answers = await asyncio.gather(*[chat(c) for _ in range(40)], *streamed)
    assert len(simulator.calls_for("chat")) == 1
    assert len({text for _, text, _ in answers}) == 1
    saved = {"endpoint": "chat_completions", "reason": "shared"}
    assert proxy.metric("sluice_upstream_calls_saved_total", **saved) == 49
    # One answer came from the call; the others were another request's flight, not the cache.
    assert sorted(result for result, _, _ in answers).count("miss") == 1
    assert {result for result, _, _ in answers} == {"miss", "shared"}


async def test_a_streamed_error_is_handed_to_the_duplicates_waiting_on_its_flight(
    simulator: Simulator, start_proxy: ProxyFactory
) -> None:
    setup = Setup("memory", start_proxy, simulator, None)
    proxy = setup.proxy()
    simulator.configure(latency_ms=300)
    simulator.fail_next(429, retry_after="0")
    simulator.fail_next(500)
    async with client(proxy) as c:
        for status in (429, 500):
            outcomes = await asyncio.gather(
                *[streamed_chat(c, f"fails with {status}") for _ in range(5)],
                return_exceptions=True,
            )
            assert all(isinstance(o, openai.APIStatusError) for o in outcomes), outcomes
            assert {o.status_code for o in outcomes} == {status}  # type: ignore[union-attr]
    assert len(simulator.calls_for("chat")) == 2  # one call each time, not one per duplicate


async def test_a_no_cache_request_never_lands_another_requests_flight(
    simulator: Simulator, start_proxy: ProxyFactory
) -> None:
    setup = Setup("memory", start_proxy, simulator, None)
    proxy = setup.proxy(batching={"enabled": True})
    simulator.configure(latency_ms=300)
    async with client(proxy) as c:
        answers = await asyncio.gather(
            chat(c, "fresh please"),
            chat(c, "fresh please", extra_headers={"Cache-Control": "no-cache"}),
        )
    assert len(simulator.calls_for("chat")) == 2
    assert [result for result, _, _ in answers] == ["miss", "bypass"]


async def test_a_follower_stops_waiting_on_a_slow_flight_and_makes_its_own_call(
    simulator: Simulator, start_proxy: ProxyFactory
) -> None:
    setup = Setup("memory", start_proxy, simulator, None)
    proxy = setup.proxy(followerWaitSeconds=0.2)
    simulator.hang_next(3)
    async with client(proxy) as c:
        leader = asyncio.create_task(chat(c, "slow leader"))
        await asyncio.sleep(0.1)
        follower = await chat(c, "slow leader")
        assert not leader.done()  # the follower was answered by a call of its own
        assert follower[0] == "miss"
        await leader
    assert len(simulator.calls_for("chat")) == 2


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'"seed": 123456789012345678901234567890', id="integer-beyond-64-bits"),
        pytest.param(b'"seed": 7, "top_p": 1e400', id="number-beyond-a-double"),
    ],
)
def test_a_number_orjson_cannot_read_exactly_gets_the_upstreams_answer_uncached(
    simulator: Simulator, start_proxy: ProxyFactory, body: bytes
) -> None:
    setup = Setup("memory", start_proxy, simulator, None)
    proxy = setup.proxy()
    payload = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], %s}'
    sent = payload % body

    def post(base: str) -> tuple[int, str | None]:
        request = urllib.request.Request(
            base + "/chat/completions",
            data=sent,
            headers={"content-type": "application/json", "authorization": "Bearer sk-alice"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.headers.get("x-sluice-cache")
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.headers.get("x-sluice-cache")

    direct, _ = post(simulator.url)
    assert post(proxy.url) == (direct, "bypass")
    assert post(proxy.url) == (direct, "bypass")  # never stored: no exact key for it
    assert len(simulator.calls_for("chat")) == 3


async def test_the_headers_a_policy_names_keep_answers_apart(
    simulator: Simulator, start_proxy: ProxyFactory
) -> None:
    setup = Setup("memory", start_proxy, simulator, None)
    proxy = setup.proxy(varyHeaders=["X-Region"])
    async with client(proxy) as c:
        eu = await chat(c, "regional", extra_headers={"X-Region": "eu"})
        us = await chat(c, "regional", extra_headers={"X-Region": "us"})
        eu_again = await chat(c, "regional", extra_headers={"X-Region": "eu"})
    assert [eu[0], us[0], eu_again[0]] == ["miss", "miss", "hit"]
    assert len(simulator.calls_for("chat")) == 2


async def test_cache_entries_are_counted_right_when_scraped(
    simulator: Simulator, start_proxy: ProxyFactory
) -> None:
    setup = Setup("memory", start_proxy, simulator, None)
    proxy = setup.proxy()
    async with client(proxy) as c:
        for n in range(3):
            await chat(c, f"entry {n}")
        # Scraped at once, not after the next expiry sweep.
        assert proxy.metric("sluice_cache_entries", backend="memory") == 3


# --- fail-open ----------------------------------------------------------------------------------


async def test_a_dead_redis_means_bypass_and_caching_recovers_when_it_returns(
    shared_setup: Setup, simulator: Simulator
) -> None:
    redis = shared_setup.redis
    assert redis is not None
    proxy = shared_setup.proxy({"localTtlSeconds": 1})
    async with client(proxy) as c:
        assert (await chat(c, "before"))[0] == "miss"
        assert (await chat(c, "before"))[0] == "hit"
        redis.kill()
        results = [(await chat(c, f"while down {i % 3}"))[0] for i in range(30)]
        if shared_setup.backend == "redis":  # every request answered, none from or into the cache
            assert set(results) == {"bypass"}
        else:  # tiered: its memory tier goes on caching alone
            assert results[:3] == ["miss"] * 3
            assert "bypass" not in results
            assert "hit" in results
        redis.start()
        recovered = False
        deadline = time.monotonic() + 20  # the breaker probes at least every 10 s
        while not recovered and time.monotonic() < deadline:
            content = f"after {time.monotonic()}"
            recovered = (await chat(c, content))[0] == "miss" and redis.dbsize() > 0
            await asyncio.sleep(0.2)
        assert recovered
        assert (await chat(c, content))[0] == "hit"
    assert proxy.metric("sluice_cache_backend_errors_total", backend="redis", operation="get") > 0
    assert "the cache is bypassed" in proxy.log()


async def test_a_hung_redis_costs_at_most_the_timeout(
    shared_setup: Setup, simulator: Simulator
) -> None:
    redis = shared_setup.redis
    assert redis is not None
    assert redis.process is not None
    proxy = shared_setup.proxy({"redis": {"timeoutMilliseconds": 50}})
    async with client(proxy) as c:
        await chat(c, "warm up")
        redis.process.send_signal(19)  # SIGSTOP: connections stay open, nothing answers
        try:
            started = time.monotonic()
            for i in range(5):
                assert (await chat(c, f"hung {i}"))[0] in ("bypass", "miss")
            elapsed = time.monotonic() - started
        finally:
            redis.process.send_signal(18)  # SIGCONT
    assert elapsed < 5 * 0.05 * 2 + 2  # a few timeouts, then the open circuit costs nothing


# --- admin invalidation ---------------------------------------------------------------------------


def invalidate(
    proxy: ProxyProcess, body: dict[str, Any], token: str | None = None
) -> tuple[int, Any]:
    port = proxy.config["admin"]["port"]
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/cache/invalidate",
        data=orjson.dumps(body),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, orjson.loads(e.read())


async def fill(proxy: ProxyProcess) -> None:
    """Four chat entries: two keys x two models."""
    for key in ("sk-alice", "sk-bob"):
        async with client(proxy, key) as c:
            for model in (CHAT_MODEL, "gpt-4o"):
                await c.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "x"}], temperature=0
                )


async def test_admin_invalidation_deletes_by_scope(setup: Setup, simulator: Simulator) -> None:
    token = "s3cret-admin-token"
    proxy = setup.proxy(env={"ADMIN_TOKEN": token}, admin={"tokenEnv": "ADMIN_TOKEN"})
    assert invalidate(proxy, {"scope": "all"})[0] == 401
    assert invalidate(proxy, {"scope": "all"}, token="wrong")[0] == 401
    await fill(proxy)
    assert invalidate(proxy, {"scope": "model", "model": "gpt-4o"}, token) == (200, {"deleted": 2})
    assert invalidate(proxy, {"scope": "tenant", "tenant": "sk-bob"}, token) == (
        200,
        {"deleted": 1},
    )
    async with client(proxy, "sk-alice") as alice, client(proxy, "sk-bob") as bob:
        assert (await chat(alice, "x"))[0] == "hit"
        assert (await chat(bob, "x"))[0] == "miss"
    assert invalidate(proxy, {"scope": "all"}, token) == (200, {"deleted": 2})
    assert invalidate(proxy, {"scope": "nonsense"}, token)[0] == 400


async def test_without_a_token_the_admin_api_refuses_and_binds_loopback_only(
    setup: Setup, simulator: Simulator
) -> None:
    proxy = setup.proxy()
    await fill(proxy)
    status, answer = invalidate(proxy, {"scope": "all"})
    assert status == 403
    assert answer["error"]["code"] == "admin_token_unset"
    async with client(proxy, "sk-alice") as alice:
        assert (await chat(alice, "x"))[0] == "hit"  # nothing was deleted
    port = proxy.config["admin"]["port"]
    # Bound to 127.0.0.1 only: 127.0.0.2 (loopback too) would reach a listener on every address.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=5).close()
    socket.create_connection(("127.0.0.1", port), timeout=5).close()


async def test_no_store_embeddings_are_not_written(setup: Setup, simulator: Simulator) -> None:
    proxy = setup.proxy()
    no_store = {"Cache-Control": "no-store"}
    async with client(proxy) as c:
        first = await c.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input="secret text", extra_headers=no_store
        )
        again = await c.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input="secret text"
        )
    assert first.headers["x-sluice-cache"] == "miss"
    assert again.headers["x-sluice-cache"] == "miss"
    assert len(simulator.calls_for("embeddings")) == 2
