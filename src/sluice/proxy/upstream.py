"""The upstream pool: a fixed set of aiohttp sessions, endpoint health, retries, and accounting.

`Upstream.send()` returns a `Call` once a final status is known (after any retries); the caller
then reads its body whole or streams it. Retries only ever happen before the first byte reaches
the caller, because nothing is handed back until the retrying is over. Decisions (which endpoint,
how long to back off) live in `endpoints.py`; this module does the I/O around them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from sluice.api import PoolSettings, UpstreamSettings
from sluice.proxy import endpoints, errors, metrics, usage

log = logging.getLogger(__name__)

# RFC 9110 hop-by-hop headers, plus those the proxy sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)
# aiohttp decompresses bodies, so the encoding and length it received no longer describe them.
RESPONSE_DROPPED = frozenset(h.encode() for h in HOP_BY_HOP | {"content-encoding"})


class KeepaliveCappedConnector(aiohttp.TCPConnector):
    """A connector that keeps at most `max_idle` idle connections; aiohttp has no such limit.

    It hooks `_release`, aiohttp's private return-to-pool step (stable since 3.x; covered by
    tests/proxy/test_upstream.py so an upgrade that changes it fails loudly).
    """

    def __init__(self, *, max_idle: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_idle = max_idle

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        if self.idle_count() >= self.max_idle:
            should_close = True
        super()._release(key, protocol, should_close=should_close)

    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._conns.values())

    def in_use_count(self) -> int:
        return len(self._acquired)

    def waiting_count(self) -> int:
        return sum(len(waiters) for waiters in self._waiters.values())


class Call:
    """An upstream response with a final status; read it whole or stream it, exactly once."""

    def __init__(self, kind: str, response: aiohttp.ClientResponse, started: float) -> None:
        self.kind = kind
        self.response = response
        self.status = response.status
        self.started = started

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self.response.headers

    def reply_headers(self) -> list[tuple[bytes, bytes]]:
        """The upstream's headers as the caller should see them."""
        # The raw bytes, as received: decoded values may not re-encode (aiohttp decodes UTF-8).
        return [
            (k.lower(), v)
            for k, v in self.response.raw_headers
            if k.lower() not in RESPONSE_DROPPED
        ]

    async def read(self, silence_seconds: float) -> bytes:
        """The whole body; counts tokens from its `usage`."""
        try:
            body = await self.response.read()
        except TimeoutError:
            raise errors.upstream_timeout(silence_seconds) from None
        except aiohttp.ClientError as e:
            raise errors.upstream_unreachable(describe(e)) from None
        finally:
            self.response.release()
            self._finished()
        if self.status == 200:
            record_tokens(self.kind, usage.from_body(body))
        return body

    async def stream(self) -> AsyncIterator[bytes]:
        """The body chunk by chunk as it arrives; counts tokens from the SSE usage chunk."""
        scanner = usage.StreamScanner()
        try:
            async for chunk in self.response.content.iter_any():
                scanner.feed(chunk)
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as e:
            # The caller already has the status line and part of the body, so the break can only
            # be passed on as a break: the server then drops the connection mid-body, and the
            # caller sees an incomplete response rather than a stream that seems to end well.
            log.warning("upstream stream of %s broke off: %s", self.kind, describe(e))
            raise
        finally:
            self.response.release()
            self._finished()
            record_tokens(self.kind, scanner.usage)

    def _finished(self) -> None:
        metrics.llm_duration.labels(self.kind).observe(time.perf_counter() - self.started)


class Upstream:
    """Sessions used round-robin, endpoints with passive health, retries with backoff."""

    def __init__(self, settings: UpstreamSettings, pool: PoolSettings, api_key: str | None) -> None:
        self.settings = settings
        self.pool = pool
        self.api_key = api_key
        self.endpoints = endpoints.EndpointSet(settings.base_urls, settings.health)
        self.sessions: list[aiohttp.ClientSession] = []
        self._turn = itertools.count()

    async def start(self) -> None:
        """Open the sessions; must run on the serving event loop."""
        per_client = math.ceil(self.pool.max_connections / self.pool.clients)
        idle_per_client = math.ceil(
            min(self.pool.max_keepalive_connections, self.pool.max_connections) / self.pool.clients
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.settings.connect_timeout_seconds,
            sock_read=self.settings.timeout_seconds,
        )
        for _ in range(self.pool.clients):
            keepalive = self.pool.keepalive_expiry_seconds
            connector = KeepaliveCappedConnector(
                max_idle=idle_per_client,
                limit=per_client,
                limit_per_host=0,
                keepalive_timeout=keepalive if keepalive > 0 else None,
                force_close=keepalive == 0,
                ttl_dns_cache=60,
            )
            self.sessions.append(
                aiohttp.ClientSession(
                    connector=connector,
                    timeout=timeout,
                    skip_auto_headers=("User-Agent",),
                )
            )
        for endpoint in self.endpoints.endpoints:
            metrics.upstream_up.labels(endpoint.label).set(1)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.sessions))
        self.sessions.clear()

    def connectors(self) -> list[KeepaliveCappedConnector]:
        return [s.connector for s in self.sessions]  # type: ignore[misc]

    def outgoing_headers(self, incoming: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        """Caller's headers minus hop-by-hop ones; the configured key replaces theirs."""
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in incoming
            if k.decode("latin-1") not in HOP_BY_HOP
        }
        if self.api_key is not None:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers

    async def send(
        self, kind: str, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Call:
        """Send with retries; `path` is relative to the base URL (`/chat/completions?x=1`)."""
        retry = self.settings.retry
        deadline = time.monotonic() + retry.budget_seconds
        attempt = 0
        while True:
            attempt += 1
            endpoint = self.endpoints.pick(time.monotonic())
            session = self.sessions[next(self._turn) % len(self.sessions)]
            started = time.perf_counter()
            try:
                response = await session.request(
                    method,
                    endpoint.url + path,
                    headers=headers,
                    data=body or None,
                    allow_redirects=False,
                )
            except (aiohttp.ClientError, TimeoutError) as e:
                # A connect timeout means unreachable; a read timeout means a silent upstream.
                silent = isinstance(e, TimeoutError) and not isinstance(
                    e, aiohttp.ConnectionTimeoutError
                )
                status = "timeout" if silent else "error"
                metrics.llm_requests.labels(kind, status).inc()
                self._failed(endpoint)
                failure: errors.ProxyError = (
                    errors.upstream_timeout(self.settings.timeout_seconds)
                    if status == "timeout"
                    else errors.upstream_unreachable(describe(e))
                )
                wait = endpoints.backoff(attempt, retry, None)
                # A timeout may mean the upstream is working on it: a retry could bill twice.
                if status == "timeout" or not self._may_retry(attempt, wait, deadline):
                    raise failure from None
                metrics.llm_retries.labels(kind, "connect").inc()
                await asyncio.sleep(wait or 0)
                continue
            metrics.llm_requests.labels(kind, str(response.status)).inc()
            if response.status >= 500:
                self._failed(endpoint)
            else:
                self.endpoints.succeeded(endpoint)
                metrics.upstream_up.labels(endpoint.label).set(1)
            if response.status in endpoints.RETRYABLE_STATUSES:
                server_wait = endpoints.retry_after_seconds(response.headers, time.time())
                wait = endpoints.backoff(attempt, retry, server_wait)
                if self._may_retry(attempt, wait, deadline):
                    response.release()
                    metrics.llm_retries.labels(kind, str(response.status)).inc()
                    await asyncio.sleep(wait or 0)
                    continue
            return Call(kind, response, started)

    def _may_retry(self, attempt: int, wait: float | None, deadline: float) -> bool:
        if wait is None or attempt >= self.settings.retry.max_attempts:
            return False
        return time.monotonic() + wait < deadline

    def _failed(self, endpoint: endpoints.Endpoint) -> None:
        self.endpoints.failed(endpoint, time.monotonic())
        if endpoint.rested_until > time.monotonic():
            metrics.upstream_up.labels(endpoint.label).set(0)

    def __repr__(self) -> str:
        urls = ",".join(e.label for e in self.endpoints.endpoints)
        return f"<Upstream {urls} clients={len(self.sessions)}>"


def record_tokens(kind: str, counts: usage.Usage | None) -> None:
    if counts is None:
        return
    prompt, completion = counts
    if prompt:
        metrics.llm_tokens.labels(kind, "prompt").inc(prompt)
    if completion:
        metrics.llm_tokens.labels(kind, "completion").inc(completion)


def describe(error: BaseException) -> str:
    """A short, caller-safe description of a transport failure."""
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect to {error.host}:{error.port}"
    return type(error).__name__ + (f": {error}" if str(error) else "")
