"""The OpenAI-compatible routes: what happens between a caller's request and the upstream.

Every `/v1/*` request lands here. The three LLM endpoints parse their JSON (so bad bodies get a
400 before any upstream call) and then pass through two layers, outermost first:

    handler (chat_completions, completions, embeddings)
      -> deferred mode           (deferred: a request that asks becomes a Batch API job item)
      -> response cache          (responses, embeddings: answer from the cache, or fetch and store)
        -> dispatcher            (dispatching: coalesce with concurrent callers, or send alone)
          -> client.Upstream     (endpoints, pool, retries)

Everything else under `/v1/` is passed through unchanged, streamed both ways.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sluice.api import LLMConfig
from sluice.proxy.cache import store
from sluice.proxy.http import callers
from sluice.proxy.http.asgi import Reply, Request
from sluice.proxy.http.callers import Caller
from sluice.proxy.llm import cachekeys, client, dispatching, embeddings, responses
from sluice.proxy.llm.deferred import deferral, jobstore

API_PREFIX = "/v1"

Dispatch = Callable[[Request, Caller, dict[str, Any]], Awaitable[Reply]]
"""A `dispatching.Dispatcher` endpoint: the way to the upstream for one caller."""


class LLMRoutes:
    """Handlers for `/v1/*`, bound to one upstream."""

    def __init__(
        self,
        config: LLMConfig,
        upstream: client.Upstream,
        backend: store.Cache | None = None,
        jobs: jobstore.JobStore | None = None,
    ) -> None:
        self.config = config
        self.upstream = upstream
        # What keeps requests apart, and how long one waits on another's call: the same rule
        # for the caches' flights, the chat flights and the merged calls.
        variants = cachekeys.Variants(config.vary_headers)
        patience = config.follower_wait_seconds
        self.responses = responses.ResponseCache(
            config.cache, backend, variants=variants, patience=patience
        )
        self.embeddings_cache = embeddings.EmbeddingCache(
            config.cache, backend, variants=variants, patience=patience
        )
        self.dispatcher = dispatching.Dispatcher(
            config.batching, self.forward, variants=variants, patience=patience
        )
        self.tenants = callers.Tenants(config.cache.tenant_header)
        self.deferral = deferral.Deferral(
            config,
            upstream,
            self.dispatcher,
            jobs or jobstore.MemoryJobStore(config.deferred.result_ttl_seconds),
        )
        # Bound once, not per request: each is a measurable part of a cache hit.
        self._fetch_chat = self.as_caller(self.dispatcher.chat)
        self._fetch_completions = self.as_caller(self.dispatcher.completions)
        self._fetch_embeddings = self.as_caller(self.dispatcher.embeddings)

    def caller(self, request: Request) -> Caller:
        headers = self.upstream.outgoing_headers(request.headers)
        credentials = callers.digest(headers.get("authorization", ""))
        return Caller(headers, credentials, self.tenants.of(request))

    # --- the LLM endpoints --------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Reply:
        payload = request.json()
        tenant = self.tenants.of(request)
        if ask := self.deferral.ask(request, payload):
            return await self.deferral.answer(dispatching.CHAT, request, tenant, payload, ask)
        return await self.responses.answer("chat", request, tenant, payload, self._fetch_chat)

    async def completions(self, request: Request) -> Reply:
        payload = request.json()
        tenant = self.tenants.of(request)
        if ask := self.deferral.ask(request, payload):
            return await self.deferral.answer(
                dispatching.COMPLETIONS, request, tenant, payload, ask
            )
        fetch = self._fetch_completions
        return await self.responses.answer("completions", request, tenant, payload, fetch)

    async def embeddings(self, request: Request) -> Reply:
        payload = request.json()
        tenant = self.tenants.of(request)
        if ask := self.deferral.ask(request, payload):
            return await self.deferral.answer(dispatching.EMBEDDINGS, request, tenant, payload, ask)
        fetch = self._fetch_embeddings
        return await self.embeddings_cache.answer(request, tenant, payload, fetch)

    def as_caller(self, dispatch: Dispatch) -> responses.Fetch:
        """`dispatch` as the cache layer calls it: the caller is worked out on a miss only."""

        async def fetching(request: Request, payload: dict[str, Any]) -> Reply:
            return await dispatch(request, self.caller(request), payload)

        return fetching

    async def job(self, request: Request) -> Reply:
        """`GET /v1/sluice/jobs/{id}`: a deferred request's job, for its own tenant only."""
        return await self.deferral.job(request, self.tenants.of(request))

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
        """Send the request (or `body` in its place); stream the answer back if it is a stream.

        An error to a streamed request comes back whole (it is a short JSON body, not SSE): so
        it can be handed to the duplicates waiting on its flight, and its connection goes back
        to the pool at once."""
        path = request.path[len(API_PREFIX) :]
        if request.query:
            path += "?" + request.query.decode("latin-1")
        sent = request.body if body is None else body
        call = await self.upstream.send(kind, request.method, path, caller.headers, sent)
        event_stream = call.headers.get("content-type", "").startswith("text/event-stream")
        if event_stream or (streaming and call.status < 400):
            return Reply(call.status, call.reply_headers(), stream=call.stream())
        data = await call.read(self.upstream.settings.timeout_seconds)
        return Reply(call.status, call.reply_headers(), data)
