"""Reading requests (with the body limit) and writing replies, against a recorded ASGI channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sluice.proxy.http import asgi, errors


def scope(headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"method": "POST", "path": "/v1/x", "query_string": b"", "headers": headers or []}


def receiver(*chunks: bytes) -> asgi.Receive:
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return receive


async def test_a_body_in_several_messages_is_joined() -> None:
    request = await asgi.read_request(scope(), receiver(b'{"a":', b" 1}"), limit=100)
    assert request.json() == {"a": 1}


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    with pytest.raises(errors.ProxyError) as caught:
        await asgi.read_request(scope([(b"content-length", b"101")]), receiver(), limit=100)
    assert caught.value.status == 413


async def test_an_undeclared_body_over_the_limit_is_refused_while_reading() -> None:
    with pytest.raises(errors.ProxyError) as caught:
        await asgi.read_request(scope(), receiver(b"x" * 60, b"x" * 60), limit=100)
    assert caught.value.status == 413


@pytest.mark.parametrize("body", [b"{nope", b"[1, 2]", b""])
async def test_json_that_is_not_an_object_is_a_400(body: bytes) -> None:
    request = asgi.Request("POST", "/v1/x", b"", [], body)
    with pytest.raises(errors.ProxyError) as caught:
        request.json()
    assert caught.value.status == 400
    assert caught.value.code == "invalid_json"


async def test_a_streamed_reply_is_sent_chunk_by_chunk_and_closed() -> None:
    sent: list[dict[str, Any]] = []
    closed = []

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"one"
            yield b"two"
        finally:
            closed.append(True)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi.send_reply(send, asgi.Reply(200, [], stream=chunks()))
    bodies = [m.get("body") for m in sent if m["type"] == "http.response.body"]
    assert bodies == [b"one", b"two", b""]
    assert closed == [True]


async def test_without_chunked_encoding_a_stream_is_sent_whole_with_its_length() -> None:
    sent: list[dict[str, Any]] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b"one"
        yield b"two"

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi.send_reply(send, asgi.Reply(200, [], stream=chunks()), chunked=False)
    assert (b"content-length", b"6") in sent[0]["headers"]
    assert [m.get("body") for m in sent[1:]] == [b"onetwo"]


async def test_a_body_cut_short_by_a_hang_up_is_never_acted_on() -> None:
    messages = [
        {"type": "http.request", "body": b'{"model": "m", "inp', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    with pytest.raises(errors.ProxyError, match="ended before"):
        await asgi.read_request(scope(), receive, 1024)


async def test_work_is_cancelled_when_the_caller_hangs_up_and_runs_to_its_end_otherwise() -> None:
    hung_up = asyncio.Event()
    cancelled = []

    async def receive() -> dict[str, Any]:
        await hung_up.wait()
        return {"type": "http.disconnect"}

    async def slow() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "late"

    async def quick() -> str:
        return "now"

    assert await asgi.until_hangup(quick(), receive) == "now"
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, hung_up.set)
    assert await asgi.until_hangup(slow(), receive) is None
    assert cancelled == [True]
    assert await asgi.until_hangup(quick(), receive) == "now"  # the task was not left cancelled
