"""The OpenAI-compatible routes: what happens between a caller's request and the upstream.

Every `/v1/*` request lands here. The three LLM endpoints parse their JSON (so bad bodies get a
400 before any upstream call) and then pass through two layers, outermost first:

    handler (chat_completions, completions, embeddings)
      -> response cache          (caching: answer from the cache, or fetch and store)
        -> fetch_* (batching: coalesce with concurrent callers, or send alone)
          -> upstream.send       (pool, retries)

Everything else under `/v1/` is passed through unchanged, streamed both ways.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from sluice.api import LLMConfig
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


class LLMRoutes:
    """Handlers for `/v1/*`, bound to one upstream."""

    def __init__(self, config: LLMConfig, upstream: upstream_.Upstream) -> None:
        self.config = config
        self.upstream = upstream

    def caller(self, request: Request) -> Caller:
        headers = self.upstream.outgoing_headers(request.headers)
        credentials = digest(headers.get("authorization", ""))
        tenant_header = self.config.cache.tenant_header
        named = request.header(tenant_header.lower().encode()) if tenant_header else None
        if named is not None:
            tenant = "h:" + digest(named.decode("latin-1"))
        else:
            own = request.header(b"authorization") or request.header(b"api-key") or b""
            tenant = digest(own.decode("latin-1"))
        return Caller(headers, credentials, tenant)

    # --- the LLM endpoints --------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Reply:
        payload = request.json()
        return await self.fetch_chat(request, self.caller(request), payload)

    async def completions(self, request: Request) -> Reply:
        payload = request.json()
        return await self.fetch_completions(request, self.caller(request), payload)

    async def embeddings(self, request: Request) -> Reply:
        payload = request.json()
        return await self.fetch_embeddings(request, self.caller(request), payload)

    # --- fetching from the upstream (the batching layer) --------------------------------------

    async def fetch_chat(self, request: Request, caller: Caller, payload: dict[str, Any]) -> Reply:
        return await self.forward("chat_completions", request, caller, streaming=_streams(payload))

    async def fetch_completions(
        self, request: Request, caller: Caller, payload: dict[str, Any]
    ) -> Reply:
        return await self.forward("completions", request, caller, streaming=_streams(payload))

    async def fetch_embeddings(
        self, request: Request, caller: Caller, payload: dict[str, Any]
    ) -> Reply:
        return await self.forward("embeddings", request, caller, streaming=False)

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


def _streams(payload: dict[str, Any]) -> bool:
    return payload.get("stream") is True
