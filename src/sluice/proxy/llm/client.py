"""The client of the OpenAI-compatible upstream: endpoints, retries, and accounting.

`Upstream.send()` returns a `Call` once a final status is known (after any retries); the caller
then reads its body whole or streams it. Retries only ever happen before the first byte reaches
the caller, because nothing is handed back until the retrying is over. Decisions (which endpoint,
whether and how long to back off) live in `upstream.endpoints`; the sessions in
`upstream.sessions`; this module does the I/O around them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable

import aiohttp
from multidict import CIMultiDictProxy

from sluice.api import PoolSettings, UpstreamSettings
from sluice.proxy import metrics
from sluice.proxy.http import errors
from sluice.proxy.llm import usage
from sluice.proxy.upstream import endpoints, sessions

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
# aiohttp decompresses bodies, so the encoding and length it received no longer describe them;
# uvicorn writes its own `date`, and an answer with two (FACTS.md) confuses caches; the proxy
# says `x-sluice-cache` and `x-sluice-batch` itself (an upstream that is another Sluice must not
# say them for it: its batch id would be logged and handed on as this proxy's).
RESPONSE_DROPPED = frozenset(
    h.encode()
    for h in HOP_BY_HOP | {"content-encoding", "date", "x-sluice-cache", "x-sluice-batch"}
)


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
            raise errors.upstream_unreachable(errors.describe(e)) from None
        finally:
            self.response.release()
            self._finished()
        if self.status == 200:
            usage.count(metrics.llm_tokens, self.kind, usage.from_body(body))
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
            # Logged once here, without a traceback: an upstream can cause it.
            log.warning("upstream stream of %s broke off: %s", self.kind, errors.describe(e))
            raise errors.upstream_broke_off(errors.describe(e)) from None
        finally:
            self.response.release()
            self._finished()
            usage.count(metrics.llm_tokens, self.kind, scanner.usage)

    def _finished(self) -> None:
        metrics.llm_duration.labels(self.kind).observe(time.perf_counter() - self.started)


class Upstream:
    """Sessions used round-robin, endpoints with passive health, retries with backoff."""

    def __init__(self, settings: UpstreamSettings, pool: PoolSettings, api_key: str | None) -> None:
        self.settings = settings
        self.api_key = api_key
        self.endpoints = endpoints.EndpointSet(settings.base_urls, settings.health)
        self.sessions = sessions.SessionPool(
            "llm",
            pool,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.timeout_seconds,
        )

    async def start(self) -> None:
        """Open the sessions; must run on the serving event loop."""
        await self.sessions.start()
        for endpoint in self.endpoints.endpoints:
            metrics.upstream_up.labels(endpoint.label).set(1)

    async def close(self) -> None:
        await self.sessions.close()

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
        deadline = time.monotonic() + self.settings.retry.budget_seconds
        attempt = 0
        while True:
            attempt += 1
            endpoint = self.endpoints.pick(time.monotonic())
            started = time.perf_counter()
            try:
                response = await self.sessions.next().request(
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
                outcome = endpoints.TIMEOUT if silent else endpoints.CONNECT_ERROR
                metrics.llm_requests.labels(kind, outcome).inc()
                self._failed(endpoint)
                wait = self._retry_wait(method, attempt, outcome, None, deadline)
                if wait is None:
                    if silent:
                        raise errors.upstream_timeout(self.settings.timeout_seconds) from None
                    raise errors.upstream_unreachable(errors.describe(e)) from None
                metrics.llm_retries.labels(kind, "connect").inc()
                await asyncio.sleep(wait)
                continue
            metrics.llm_requests.labels(kind, str(response.status)).inc()
            if response.status >= 500:
                self._failed(endpoint)
            else:
                self.endpoints.succeeded(endpoint)
                metrics.upstream_up.labels(endpoint.label).set(1)
            wait = self._retry_wait(method, attempt, response.status, response.headers, deadline)
            if wait is None:
                return Call(kind, response, started)
            response.release()
            metrics.llm_retries.labels(kind, str(response.status)).inc()
            await asyncio.sleep(wait)

    def _retry_wait(
        self,
        method: str,
        attempt: int,
        outcome: int | str,
        headers: CIMultiDictProxy[str] | None,
        deadline: float,
    ) -> float | None:
        return endpoints.retry_wait(
            self.settings.retry,
            attempt,
            outcome,
            headers,
            method=method,
            now=time.time(),
            remaining=deadline - time.monotonic(),
        )

    def _failed(self, endpoint: endpoints.Endpoint) -> None:
        self.endpoints.failed(endpoint, time.monotonic())
        if endpoint.rested_until > time.monotonic():
            metrics.upstream_up.labels(endpoint.label).set(0)

    def __repr__(self) -> str:
        urls = ",".join(e.label for e in self.endpoints.endpoints)
        return f"<Upstream {urls} {self.sessions!r}>"
