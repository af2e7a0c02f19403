"""The OpenAI-compatible routes: what happens between a caller's request and the upstream.

Every `/v1/*` request lands here. The three LLM endpoints parse their JSON (so bad bodies get a
400 before any upstream call) and then pass through two layers, outermost first:

    handler (chat_completions, completions, embeddings)
      -> response cache          (responses, vectors: answer from the cache, or fetch and store)
        -> fetch_* (batching: coalesce with concurrent callers, or send alone)
          -> upstream.send       (pool, retries)

Everything else under `/v1/` is passed through unchanged, streamed both ways.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from sluice.api import LLMConfig
from sluice.proxy import caching, dispatching, responses, vectors
from sluice.proxy import upstream as upstream_
from sluice.proxy.asgi import Reply, Request

API_PREFIX = "/v1"


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as far as sharing is concerned.

    `credentials` identifies what the upstream sees (requests are only coalesced when it is
    equal); `tenant` identifies the caller for the cache (entries are only shared within it).
    Both are hashes: no secret is kept or logged.
    """

    headers: dict[str, str]
    """Headers to send upstream (hop-by-hop removed, configured API key applied)."""
    credentials: str
    """Hash of the `Authorization` sent upstream."""
    tenant: str
    """Hash of the caller's own credentials, or the configured tenant header's value."""


Fetch = Callable[[Request, Caller, dict[str, Any]], Awaitable[Reply]]
"""A `fetch_*` method: the batching layer's way to the upstream."""


class LLMRoutes:
    """Handlers for `/v1/*`, bound to one upstream."""

    def __init__(
        self,
        config: LLMConfig,
        upstream: upstream_.Upstream,
        cache: caching.Cache | None = None,
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.responses = responses.ResponseCache(config.cache, cache)
        self.vectors = vectors.VectorCache(config.cache, cache)
        self.batching = dispatching.Dispatcher(config.batching, self.forward)
        # Worked out once, not per request: each is a measurable part of a cache hit.
        tenant_header = config.cache.tenant_header
        self._tenant_header = tenant_header.lower().encode() if tenant_header else None
        self._fetch_chat = self.as_caller(self.fetch_chat)
        self._fetch_completions = self.as_caller(self.fetch_completions)
        self._fetch_embeddings = self.as_caller(self.fetch_embeddings)

    def caller(self, request: Request) -> Caller:
        headers = self.upstream.outgoing_headers(request.headers)
        credentials = digest(headers.get("authorization", ""))
        return Caller(headers, credentials, self.tenant(request))

    def tenant(self, request: Request) -> str:
        """`Caller.tenant` alone: all a cache hit needs, at a fraction of `caller()`'s cost."""
        named = request.header(self._tenant_header) if self._tenant_header else None
        if named is not None:
            return "h:" + digest(named.decode("latin-1"))
        own = request.header(b"authorization") or request.header(b"api-key") or b""
        return digest(own.decode("latin-1"))

    # --- the LLM endpoints --------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Reply:
        payload = request.json()
        tenant = self.tenant(request)
        return await self.responses.answer("chat", request, tenant, payload, self._fetch_chat)

    async def completions(self, request: Request) -> Reply:
        payload = request.json()
        tenant = self.tenant(request)
        fetch = self._fetch_completions
        return await self.responses.answer("completions", request, tenant, payload, fetch)

    async def embeddings(self, request: Request) -> Reply:
        payload = request.json()
        tenant = self.tenant(request)
        return await self.vectors.answer(request, tenant, payload, self._fetch_embeddings)

    def as_caller(self, fetch: Fetch) -> responses.Fetch:
        """`fetch` as the cache layer calls it: the caller is worked out on a miss only."""

        async def fetching(request: Request, payload: dict[str, Any]) -> Reply:
            return await fetch(request, self.caller(request), payload)

        return fetching

    # --- fetching from the upstream (the batching layer) --------------------------------------

    async def fetch_chat(self, request: Request, caller: Caller, payload: dict[str, Any]) -> Reply:
        return await self.batching.chat(request, caller, payload)

    async def fetch_completions(
        self, request: Request, caller: Caller, payload: dict[str, Any]
    ) -> Reply:
        return await self.batching.completions(request, caller, payload)

    async def fetch_embeddings(
        self, request: Request, caller: Caller, payload: dict[str, Any]
    ) -> Reply:
        return await self.batching.embeddings(request, caller, payload)

    # --- everything else ----------------------------------------------------------------------

    async def passthrough(self, request: Request) -> Reply:
        """Any other `/v1/*` path and method, body streamed back without buffering."""
        return await self.forward("other", request, self.caller(request), streaming=True)

    async def forward(
        self,
        kind: str,
        request: Request,
        caller: Caller,
        *,
        streaming: bool,
        body: bytes | None = None,
    ) -> Reply:
        """Send the request (or `body` in its place); stream the answer back if it is a stream."""
        path = request.path[len(API_PREFIX) :]
        if request.query:
            path += "?" + request.query.decode("latin-1")
        sent = request.body if body is None else body
        call = await self.upstream.send(kind, request.method, path, caller.headers, sent)
        event_stream = call.headers.get("content-type", "").startswith("text/event-stream")
        if streaming or event_stream:
            return Reply(call.status, call.reply_headers(), stream=call.stream())
        data = await call.read(self.upstream.settings.timeout_seconds)
        return Reply(call.status, call.reply_headers(), data)


def digest(value: str) -> str:
    """A short, stable, non-reversible identifier for a secret."""
    return hashlib.blake2b(value.encode(), digest_size=12).hexdigest()
