"""The pass-through proxy end to end: the official openai client -> `sluice proxy` -> simulator.

Batching and caching are switched off here so each test sees plain pass-through; their own
tests live beside this one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import socket
import struct
import time
import urllib.request
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from sluice.proxy.http import guard
from tests.support.proxy import ProxyFactory, ProxyProcess, free_port
from tests.support.simulator import Simulator, embedding_vector

pytestmark = pytest.mark.integration

PLAIN = {"batching": {"enabled": False}, "cache": {"mode": "off"}}


def llm_config(upstream: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {"llm": {**PLAIN, "upstream": upstream, **sections}}


@pytest.fixture
def proxy(start_proxy: ProxyFactory, simulator: Simulator) -> ProxyProcess:
    return start_proxy(llm_config({"url": simulator.url}))


def client(proxy: ProxyProcess, key: str = "sk-caller") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url, api_key=key, max_retries=0)


def async_client(proxy: ProxyProcess, key: str = "sk-caller") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url, api_key=key, max_retries=0)


# --- the OpenAI surface -------------------------------------------------------------------------


def test_sync_chat_completion_passes_through(proxy: ProxyProcess, simulator: Simulator) -> None:
    with client(proxy) as c:
        answer = c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
        )
    assert "hello there" in (answer.choices[0].message.content or "")
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 0
    assert len(simulator.calls_for("chat")) == 1


async def test_async_streaming_chat_arrives_in_chunks_with_usage(
    proxy: ProxyProcess, simulator: Simulator
) -> None:
    simulator.configure(stream_chunk_delay_ms=20)
    async with async_client(proxy) as c:
        stream = await c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "one two three four five six"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        arrivals, text, usage = [], "", None
        async for chunk in stream:
            arrivals.append(time.monotonic())
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
    assert "one two three four five six" in text
    assert usage is not None
    assert usage.completion_tokens > 0
    # Chunks spaced by the simulator's delay arrive spaced: nothing buffered the stream whole.
    assert arrivals[-1] - arrivals[0] >= 0.1
    completion = await_metric(
        proxy,
        "sluice_llm_tokens_total",
        usage.completion_tokens,
        endpoint="chat_completions",
        type="completion",
    )
    assert completion == usage.completion_tokens


def await_metric(proxy: ProxyProcess, name: str, expected: float, **labels: str) -> float:
    """A counter's value once it reached `expected` (streams are counted as they close)."""
    deadline = time.monotonic() + 5
    value = proxy.metric(name, **labels)
    while value < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = proxy.metric(name, **labels)
    return value


def test_sync_streaming_legacy_completion(proxy: ProxyProcess) -> None:
    with client(proxy) as c:
        stream = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi", stream=True)
        text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert text


async def test_embeddings_in_base64_and_float(proxy: ProxyProcess) -> None:
    async with async_client(proxy) as c:
        packed = await c.embeddings.create(
            model="text-embedding-3-small", input=["alpha", "beta"], dimensions=8
        )
        floats = await c.embeddings.create(
            model="text-embedding-3-small", input="alpha", dimensions=8, encoding_format="float"
        )
    expected = embedding_vector("text-embedding-3-small", "alpha", 8)
    assert packed.data[0].embedding == pytest.approx(expected)
    assert packed.data[1].embedding == pytest.approx(
        embedding_vector("text-embedding-3-small", "beta", 8)
    )
    assert floats.data[0].embedding == pytest.approx(expected)


def test_models_and_other_v1_paths_pass_through_unchanged(
    proxy: ProxyProcess, simulator: Simulator
) -> None:
    with client(proxy) as c:
        assert "gpt-4o-mini" in {m.id for m in c.models.list()}
        assert c.models.retrieve("gpt-4o").id == "gpt-4o"
    body = b'{"purpose": "batch"}'
    request = urllib.request.Request(
        proxy.url + "/vector_stores/vs_1/files?limit=3&order=asc",
        data=body,
        method="PUT",
        headers={"Content-Type": "application/json", "X-Custom": "kept"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        echoed = orjson.loads(answer.read())
    assert echoed["method"] == "PUT"
    assert echoed["path"] == "/v1/vector_stores/vs_1/files"
    assert echoed["query"] == "limit=3&order=asc"
    assert echoed["headers"]["x-custom"] == "kept"
    assert echoed["body"] == body.decode()


# --- credentials --------------------------------------------------------------------------------


def test_callers_authorization_is_forwarded_when_no_key_is_configured(
    proxy: ProxyProcess, simulator: Simulator
) -> None:
    with client(proxy, key="sk-mine") as c:
        c.models.list()
    assert simulator.calls[-1].authorization == "Bearer sk-mine"


def test_configured_key_replaces_the_callers(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start_proxy(
        llm_config({"url": simulator.url, "apiKeyEnv": "UPSTREAM_KEY"}),
        env={"UPSTREAM_KEY": "sk-upstream"},
    )
    with client(proxy, key="sk-mine") as c:
        c.models.list()
    assert simulator.calls[-1].authorization == "Bearer sk-upstream"


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        pytest.param(
            "POST", "/v1/chat/completions", b"{not json", 400, "invalid_json", id="not-json"
        ),
        pytest.param("POST", "/v1/embeddings", b"[1]", 400, "invalid_json", id="not-an-object"),
        pytest.param(
            "POST", "/v1/embeddings", b"x" * 2048, 413, "request_too_large", id="too-large"
        ),
        pytest.param("GET", "/v2/models", b"", 404, "not_found", id="unknown-path"),
    ],
)
def test_bad_input_gets_an_openai_shaped_error(
    start_proxy: ProxyFactory,
    simulator: Simulator,
    method: str,
    path: str,
    body: bytes,
    status: int,
    code: str,
) -> None:
    config = llm_config({"url": simulator.url})
    config["listen"] = {"maxBodyBytes": 1024}
    proxy = start_proxy(config)
    request = urllib.request.Request(proxy.base + path, data=body or None, method=method)
    error = fetch_error(request)
    assert error.code == status
    payload = orjson.loads(error.read())
    error.close()
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["code"] == code
    assert simulator.stats.total_calls == 0


def fetch_error(request: urllib.request.Request) -> urllib.error.HTTPError:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    return caught.value


def test_unreachable_upstream_is_a_502(start_proxy: ProxyFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    proxy = start_proxy(
        llm_config({"url": dead, "retry": {"maxAttempts": 2, "backoffSeconds": 0.01}})
    )
    with client(proxy) as c, pytest.raises(openai.APIStatusError) as caught:
        c.models.list()
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unreachable"
    assert proxy.metric("sluice_llm_requests_total", endpoint="other", status="error") == 2


def test_silent_upstream_is_a_504(start_proxy: ProxyFactory, simulator: Simulator) -> None:
    proxy = start_proxy(llm_config({"url": simulator.url, "timeoutSeconds": 0.3}))
    simulator.hang_next(3)
    with client(proxy) as c, pytest.raises(openai.APIStatusError) as caught:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"


def test_upstream_errors_pass_through_unchanged(proxy: ProxyProcess, simulator: Simulator) -> None:
    simulator.fail_next(400, message="bad things", code="custom_code")
    with client(proxy) as c, pytest.raises(openai.BadRequestError) as caught:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "custom_code"
    assert "bad things" in caught.value.message


# --- retries and endpoint health ----------------------------------------------------------------


def test_retryable_statuses_are_retried_and_retry_after_honoured(
    proxy: ProxyProcess, simulator: Simulator
) -> None:
    simulator.fail_next(429, retry_after="0.3")
    simulator.fail_next(503)
    started = time.monotonic()
    with client(proxy) as c:
        answer = c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "persist"}]
        )
    assert answer.choices
    assert time.monotonic() - started >= 0.3
    assert [call.status for call in simulator.calls_for("chat")] == [429, 503, 200]
    assert proxy.metric("sluice_llm_retries_total", endpoint="chat_completions", reason="429") == 1


def test_retries_stop_at_max_attempts(start_proxy: ProxyFactory, simulator: Simulator) -> None:
    proxy = start_proxy(
        llm_config({"url": simulator.url, "retry": {"maxAttempts": 2, "backoffSeconds": 0.01}})
    )
    simulator.fail_next(503, count=5)
    with client(proxy) as c, pytest.raises(openai.InternalServerError):
        c.models.list()
    assert len(simulator.calls) == 2


def test_a_stream_is_never_retried_once_it_began(proxy: ProxyProcess, simulator: Simulator) -> None:
    simulator.cut_stream_next(2)
    with client(proxy) as c:
        stream = c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a b c d e f"}], stream=True
        )
        with pytest.raises(openai.APIError):
            list(stream)
    assert len(simulator.calls_for("chat")) == 1


def test_a_failing_endpoint_is_rested_and_traffic_goes_to_the_healthy_one(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    upstream = {
        "endpoints": [dead, simulator.url],
        "health": {"failureThreshold": 1, "cooldownSeconds": 60},
        "retry": {"maxAttempts": 2, "backoffSeconds": 0.01},
    }
    proxy = start_proxy(llm_config(upstream))
    with client(proxy) as c:
        for _ in range(6):
            c.models.list()
    assert len(simulator.calls) == 6
    assert proxy.metric("sluice_llm_requests_total", endpoint="other", status="error") == 1
    assert proxy.metric("sluice_upstream_endpoint_up", upstream=dead.split("/")[2]) == 0


# --- metrics ------------------------------------------------------------------------------------


async def test_metrics_count_the_traffic_sent(proxy: ProxyProcess, simulator: Simulator) -> None:
    async with async_client(proxy) as c:
        await asyncio.gather(
            *(
                c.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"q {i}"}]
                )
                for i in range(5)
            )
        )
        await c.embeddings.create(model="text-embedding-3-small", input="one two three")
    labels = {"route": "chat_completions", "method": "POST", "status": "200"}
    assert proxy.metric("sluice_http_requests_total", **labels) == 5
    assert proxy.metric("sluice_http_request_duration_seconds_count", route="chat_completions") == 5
    assert proxy.metric("sluice_llm_requests_total", endpoint="chat_completions", status="200") == 5
    prompt = sum(
        c.body["messages"][0]["content"].count(" ") + 1 for c in simulator.calls_for("chat")
    )
    assert prompt > 0
    assert proxy.metric("sluice_llm_tokens_total", endpoint="embeddings", type="prompt") == 3
    samples = proxy.metrics()
    names = {name for name, _ in samples}
    for expected in (
        "process_cpu_seconds_total",
        "python_gc_collections_total",
        "sluice_asyncio_tasks",
        "sluice_event_loop_lag_seconds",
        "sluice_pool_connections",
        "sluice_pool_waiting_requests",
    ):
        assert expected in names
    idle = samples[
        ("sluice_pool_connections", (("client", "0"), ("pool", "llm"), ("state", "idle")))
    ]
    busy = samples[
        ("sluice_pool_connections", (("client", "0"), ("pool", "llm"), ("state", "in_use")))
    ]
    assert idle >= 1
    assert busy == 0


# --- shutdown -----------------------------------------------------------------------------------


async def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(
    proxy: ProxyProcess, simulator: Simulator
) -> None:
    simulator.configure(latency_ms=1500)
    async with aiohttp.ClientSession() as session:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}]}
        in_flight = asyncio.create_task(session.post(proxy.url + "/chat/completions", json=body))
        await asyncio.sleep(0.5)
        proxy.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with session.get(proxy.base + "/readyz") as ready:
            assert ready.status == 503
        async with session.post(proxy.url + "/chat/completions", json=body) as refused:
            assert refused.status == 503
            assert (await refused.json())["error"]["code"] == "shutting_down"
        answer = await in_flight
        assert answer.status == 200
        assert (await answer.json())["choices"]
        answer.release()
    assert await asyncio.to_thread(proxy.wait, 15) in (0, -signal.SIGTERM)


def test_unpacking_base64_matches_float_encoding() -> None:
    """Guards the helper the embeddings tests rely on: base64 is little-endian float32."""
    vector = embedding_vector("m", "x", 4)
    packed = base64.b64encode(struct.pack("<4f", *vector)).decode()
    assert list(struct.unpack("<4f", base64.b64decode(packed))) == pytest.approx(vector)


# --- paths --------------------------------------------------------------------------------------


TRAVERSALS = [
    "/v1/../admin",
    "/v1/%2e%2e/admin",
    "/v1/%2E%2E%2Fadmin",
    "/v1/..%2fadmin",
    "/v1/files/..%5c..%5cadmin",
    "/v1/%252e%252e/admin",
    "/v1//admin",
    "/v1/./models",
    "/v1/models/%2e%2e",
    "/v1/..;/admin",
    "/v1/chat/completions%23",
]


def raw_get(proxy: ProxyProcess, path: str) -> bytes:
    """A request line sent exactly as written: HTTP clients would normalise these paths."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
        conn.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-caller\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_no_path_that_leaves_v1_reaches_the_upstream_with_the_proxys_key(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start_proxy(
        llm_config({"url": simulator.url, "apiKeyEnv": "UPSTREAM_KEY"}),
        env={"UPSTREAM_KEY": "sk-upstream"},
    )
    for path in TRAVERSALS:
        answer = raw_get(proxy, path)
        assert answer.startswith(b"HTTP/1.1 404"), (path, answer[:200])
        assert b'"code":"not_found"' in answer
    assert simulator.calls == []
    assert raw_get(proxy, "/v1/models").startswith(b"HTTP/1.1 200")


def test_an_answer_passed_through_has_one_date_header(proxy: ProxyProcess) -> None:
    answer = raw_get(proxy, "/v1/models")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.count(b"\r\ndate:") == 1


def test_a_post_is_not_retried_on_502_unless_the_policy_opts_in(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    plain = start_proxy(llm_config({"url": simulator.url}))
    simulator.fail_next(502)
    with client(plain) as c, pytest.raises(openai.InternalServerError):
        c.with_options(max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "bill me once"}]
        )
    assert [call.status for call in simulator.calls_for("chat")] == [502]
    opted = start_proxy(llm_config({"url": simulator.url, "retry": {"onStatus": [502]}}))
    simulator.fail_next(502)
    with client(opted) as c:
        c.with_options(max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "retry me"}]
        )
    assert [call.status for call in simulator.calls_for("chat")] == [502, 502, 200]


# --- slow and oversized requests ----------------------------------------------------------------


GUARDED = {"headerTimeoutSeconds": 0.5, "bodyTimeoutSeconds": 0.5, "maxHeaderBytes": 4096}


@pytest.fixture
def guarded(start_proxy: ProxyFactory, simulator: Simulator) -> ProxyProcess:
    config = llm_config({"url": simulator.url})
    config["listen"] = GUARDED
    return start_proxy(config)


def read_all(conn: socket.socket) -> bytes:
    """Everything until the proxy closes the connection (the socket's timeout bounds it)."""
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    return answer


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="nothing-at-all"),
        pytest.param(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", id="headers-never-end"),
    ],
)
def test_a_request_whose_head_dawdles_is_answered_408_and_closed(
    guarded: ProxyProcess, simulator: Simulator, sent: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as conn:
        for byte in sent:  # slowloris: a byte at a time, well inside any per-read timeout
            conn.sendall(bytes([byte]))
            time.sleep(0.005)
        answer = read_all(conn)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"code":"request_timeout"' in answer
    assert simulator.calls == []


def test_a_body_that_never_arrives_is_answered_408_and_nothing_is_sent_upstream(
    guarded: ProxyProcess, simulator: Simulator
) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"purpose": "'
        )
        answer = read_all(conn)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"body" in answer
    assert simulator.calls == []


def test_headers_beyond_the_bound_get_431_and_a_closed_connection(
    guarded: ProxyProcess, simulator: Simulator
) -> None:
    big = b"X-Padding: " + b"a" * 8192 + b"\r\n"
    for head in (big, big * 40):  # one read's worth, and a head that would never end
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as conn:
            with contextlib.suppress(ConnectionError):  # the proxy may close while we send
                conn.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
            answer = read_all(conn)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert simulator.calls == []
    assert raw_get(guarded, "/v1/models").startswith(b"HTTP/1.1 200")


def test_a_refused_connection_is_closed_though_its_caller_keeps_it_open(
    guarded: ProxyProcess,
) -> None:
    # A head too large that arrives in one read, with a (empty) body: refused as the head ends,
    # before the parser reaches the message's end, which must not call off the linger's close.
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 5000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as conn:
        conn.sendall(head)
        assert read_all(conn).startswith(b"HTTP/1.1 431")  # and the proxy's end of sending
        time.sleep(guard.LINGER_SECONDS + 1)  # the caller neither sends nor closes
        assert closed_by_peer(conn)


def test_a_keep_alive_connections_next_request_that_dawdles_is_answered_408_too(
    guarded: ProxyProcess,
) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as conn:
        conn.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n0\r\n\r\n"):  # the first answer, whole
            answer += conn.recv(65536)
        conn.sendall(b"GET /v1/models HTTP/1.1\r\n")  # the next head, never finished
        answer = read_all(conn)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b'"code":"request_timeout"' in answer


def closed_by_peer(conn: socket.socket) -> bool:
    """Has the other end closed the connection (what is sent then gets a reset, then EPIPE)?"""
    try:
        for _ in range(5):
            conn.sendall(b"x")
            time.sleep(0.1)
    except ConnectionError:
        return True
    return False


def test_a_keep_alive_connection_serves_requests_that_arrive_in_time(
    guarded: ProxyProcess, simulator: Simulator
) -> None:
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as conn:
        for _ in range(3):
            conn.sendall(request)
            answer = b""
            while not answer.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's end
                answer += conn.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
            time.sleep(0.3)  # under the head timeout each time, over it in all
    assert len(simulator.calls) == 3


# --- HTTP/1.0 -----------------------------------------------------------------------------------


def http10(proxy: ProxyProcess, head: str, body: bytes = b"") -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
        conn.sendall(head.encode() + body)
        answer = read_all(conn)  # HTTP/1.0 without keep-alive: the proxy closes after it
    head_bytes, _, rest = answer.partition(b"\r\n\r\n")
    return head_bytes.lower(), rest


def test_an_http_1_0_request_gets_an_answer_an_http_1_0_client_can_read(
    proxy: ProxyProcess,
) -> None:
    head, body = http10(proxy, "GET /v1/models HTTP/1.0\r\nAuthorization: Bearer sk-x\r\n\r\n")
    assert b"transfer-encoding" not in head  # chunked is HTTP/1.1's; a 1.0 client cannot read it
    assert int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) == len(body)
    assert orjson.loads(body)["data"]
    chat = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a b c"}], "stream": True}
    )
    head, body = http10(
        proxy,
        "POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(chat)}\r\n\r\n",
        chat,
    )
    assert head.startswith(b"http/1.1 200")
    assert b"transfer-encoding" not in head
    assert body.endswith(b"data: [DONE]\n\n")


# --- shutdown past its grace --------------------------------------------------------------------


async def test_requests_still_in_flight_when_the_grace_runs_out_get_an_openai_shaped_503(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    config = llm_config({"url": simulator.url})
    config["listen"] = {"shutdownGraceSeconds": 1}
    proxy = start_proxy(config)
    simulator.configure(latency_ms=20_000)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "too slow"}]}
    async with aiohttp.ClientSession() as session:

        async def ask() -> tuple[int, dict[str, Any], str | None]:
            async with session.post(proxy.url + "/chat/completions", json=body) as answer:
                return answer.status, await answer.json(), answer.headers.get("x-request-id")

        in_flight = [asyncio.create_task(ask()) for _ in range(3)]
        await asyncio.sleep(0.5)
        proxy.signal(signal.SIGTERM)
        answers = await asyncio.gather(*in_flight)
    for status, payload, request_id in answers:
        assert status == 503
        assert payload["error"]["code"] == "shutting_down"
        assert set(payload["error"]) == {"message", "type", "param", "code"}
        assert request_id  # a cut answer is an answer: it names its request like any other
    assert await asyncio.to_thread(proxy.wait, 15) in (0, -signal.SIGTERM)
    assert all(call.hung_up_at is not None for call in simulator.calls)  # upstream calls closed
    assert "Traceback" not in proxy.log()
    assert "Internal Server Error" not in proxy.log()


# --- a caller that hangs up ---------------------------------------------------------------------


async def hang_up_after(proxy: ProxyProcess, body: dict[str, Any], seconds: float) -> float:
    """Send `body` to chat completions and close the connection after `seconds`; when."""
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(proxy.url + "/chat/completions", json=body))
        await asyncio.sleep(seconds)
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
        return time.time()


async def wait_for_hang_up(simulator: Simulator, count: int = 1) -> list[float]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        seen = [c.hung_up_at for c in simulator.calls if c.hung_up_at is not None]
        if len(seen) >= count:
            return seen
        await asyncio.sleep(0.02)
    return []


def pool_idle(proxy: ProxyProcess, kind: str = "chat_completions") -> bool:
    """No upstream connection in use and no chat slot held, once the proxy has settled (a
    stream's slot is let go just after its last byte went out)."""
    deadline = time.monotonic() + 3
    while True:
        in_use = sum(
            proxy.metric("sluice_pool_connections", client=str(i), pool="llm", state="in_use")
            for i in range(2)
        )
        idle = in_use == 0 and proxy.metric("sluice_batches_in_flight", endpoint=kind) == 0
        if idle or time.monotonic() > deadline:
            return idle
        time.sleep(0.05)


async def test_a_long_call_whose_caller_hangs_up_is_closed_upstream_and_frees_its_slot(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start_proxy({"llm": {"upstream": {"url": simulator.url}, "cache": {"mode": "off"}}})
    simulator.configure(latency_ms=10_000)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "long"}]}
    left = await hang_up_after(proxy, body, 0.3)
    hung_up = await wait_for_hang_up(simulator)
    assert hung_up, "the upstream call went on after its caller left"
    print(f"upstream closed {1000 * (hung_up[0] - left):.0f} ms after the caller left")
    assert pool_idle(proxy)
    assert proxy.metric("sluice_http_requests_total", route="chat_completions", method="POST",
                        status="499") == 1  # fmt: skip


async def test_a_shared_call_goes_on_for_those_who_stay_and_stops_when_the_last_leaves(
    start_proxy: ProxyFactory, simulator: Simulator
) -> None:
    proxy = start_proxy({"llm": {"upstream": {"url": simulator.url}}})
    simulator.configure(latency_ms=1500)
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "shared"}],
        "temperature": 0,
    }
    async with aiohttp.ClientSession() as session:
        staying = asyncio.create_task(session.post(proxy.url + "/chat/completions", json=body))
        await asyncio.sleep(0.2)
        await hang_up_after(proxy, body, 0.2)
        answer = await staying
        assert answer.status == 200
        assert answer.headers["x-sluice-cache"] in ("miss", "shared")
        answer.release()
    assert len(simulator.calls) == 1
    assert simulator.calls[0].hung_up_at is None
    simulator.configure(latency_ms=10_000)
    body["messages"] = [{"role": "user", "content": "everyone leaves"}]
    await asyncio.gather(hang_up_after(proxy, body, 0.3), hang_up_after(proxy, body, 0.4))
    assert len(simulator.calls) == 2
    assert await wait_for_hang_up(simulator)
    assert pool_idle(proxy)


# --- faults on every path release what they hold ------------------------------------------------


FAULTS = [
    pytest.param(lambda sim: sim.fail_next(500), id="500"),
    pytest.param(lambda sim: sim.fail_next(429, retry_after="0"), id="429"),
    pytest.param(lambda sim: sim.close_next(), id="closed"),
    pytest.param(lambda sim: sim.close_next(reset=True), id="reset"),
    pytest.param(lambda sim: sim.cut_stream_next(1), id="cut"),
    pytest.param(lambda sim: sim.hang_next(5), id="silent"),
]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("cached", [False, True], ids=["alone", "cache-flight"])
async def test_every_fault_releases_the_chat_slot_and_the_connection_and_logs_no_traceback(
    start_proxy: ProxyFactory, simulator: Simulator, fault: Any, streamed: bool, cached: bool
) -> None:
    upstream = {"url": simulator.url, "timeoutSeconds": 0.5, "retry": {"maxAttempts": 1}}
    cache = {"mode": "deterministic" if cached else "off"}
    proxy = start_proxy({"llm": {"upstream": upstream, "cache": cache}})
    fault(simulator)
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "a b c d"}],
        "temperature": 0,  # cacheable, and shared by the cache's flight when the cache is on
    }
    async with async_client(proxy) as c:
        with contextlib.suppress(openai.APIError):
            answer = await c.chat.completions.create(**body, stream=streamed)  # type: ignore[call-overload]
            if streamed:
                async for _ in answer:
                    pass
        # The slot and the connection are back: the next call is answered as usual.
        again = await c.chat.completions.create(**body)  # type: ignore[call-overload]
    assert again.choices
    assert pool_idle(proxy)
    assert "Traceback" not in proxy.log()
