"""What of an upstream's answer reaches the caller."""

from __future__ import annotations

import types
from typing import cast

import aiohttp

from sluice.proxy.llm import client


def test_the_proxys_own_headers_and_hop_by_hop_ones_are_not_taken_from_the_upstream() -> None:
    raw = [
        (b"Content-Type", b"application/json"),
        (b"Connection", b"keep-alive"),
        (b"Date", b"Wed, 02 Dec 2026 15:00:00 GMT"),
        (b"X-Sluice-Cache", b"hit"),
        (b"X-Sluice-Batch", b"inner-1"),
        (b"X-Request-Id", b"req-1"),
    ]
    response = cast(aiohttp.ClientResponse, types.SimpleNamespace(status=200, raw_headers=raw))
    call = client.Call("embeddings", response, started=0.0)
    assert call.reply_headers() == [
        (b"content-type", b"application/json"),
        (b"x-request-id", b"req-1"),
    ]
