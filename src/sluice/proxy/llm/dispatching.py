"""The batching layer of the LLM routes: how each request reaches the upstream.

`routes.LLMRoutes` hands every request here, through the caches on a miss (DESIGN.md §4):

- embeddings, and non-streaming legacy completions, wait in a `batching.Batcher` lane with
  requests that agree on everything but their inputs and bill the same credentials; a batch is
  one upstream call with an array `input`/`prompt` (`coalescing.py` merges and splits). A 400,
  413 or 422 to a merged call is split in halves until only the callers whose own inputs the
  upstream refuses get its answer, unchanged.
- chat, which no upstream takes in bulk, is sent at once under a `batching.Limiter`; identical
  repeatable requests of one tenant in flight together share one call (`cache.flights`).
- streams and requests that cannot be merged go alone under the same `Limiter`.

Every caller's `Reply` looks like the upstream's answer to that caller alone, so the cache layer
above stores it as such. Callers must pass a `request` whose body is the JSON of `payload`: a
request that goes alone is sent as its bytes, unparsed. Response headers of a merged call
(the upstream's request id, rate limits) go to every caller of it: they describe the call that
answered them. A merged call has an id of its own: sent upstream as its `x-request-id`, and to
each of its callers as `x-sluice-batch` (and so in their access log lines).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Protocol

import orjson

from sluice.api import BatchingSettings
from sluice.proxy import metrics
from sluice.proxy.cache import flights
from sluice.proxy.http import errors, tracing
from sluice.proxy.http.asgi import Reply, Request, error_reply
from sluice.proxy.http.callers import Caller
from sluice.proxy.llm import batching, batchqueue, cachekeys, coalescing, usage

log = logging.getLogger(__name__)

EMBEDDINGS, COMPLETIONS, CHAT = "embeddings", "completions", "chat_completions"
SPLIT_STATUSES = frozenset({400, 413, 422})
"""Answers that can be about one input; 401/404/429 are about the call, so everyone gets them."""
BATCH_HEADER = b"x-sluice-batch"
BILLING_HEADERS = ("api-key", "openai-organization", "openai-project")
"""Besides `Authorization`, headers that pick who the upstream bills (Azure's key, org, project)."""

Split = Callable[[bytes, Sequence[coalescing.Inputs]], list[bytes]]


class Forward(Protocol):
    """`routes.LLMRoutes.forward`: one upstream call for one request (or `body` in its place)."""

    def __call__(
        self,
        kind: str,
        request: Request,
        caller: Caller,
        *,
        streaming: bool,
        body: bytes | None = None,
    ) -> Awaitable[Reply]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """One caller's share of a coalesced call."""

    request: Request
    caller: Caller
    payload: dict[str, Any]
    inputs: coalescing.Inputs


class Dispatcher:
    """Batchers, limiters and shared flights for one upstream, per `llm.batching`."""

    def __init__(
        self,
        settings: BatchingSettings,
        forward: Forward,
        *,
        variants: cachekeys.Variants | None = None,
        patience: float | None = None,
    ) -> None:
        self.settings = settings
        self.forward = forward
        self.variants = variants or cachekeys.Variants()
        self.patience = patience
        on = settings.endpoints if settings.enabled else None
        wait = settings.max_wait_milliseconds / 1000
        self.embedder: batching.Batcher[Hashable, Part, Reply] | None = None
        self.completer: batching.Batcher[Hashable, Part, Reply] | None = None
        if on is not None and on.embeddings:
            size = min(settings.max_batch_size, settings.max_inputs_per_call)
            limits = self._limits(size, wait, settings.max_tokens_per_call)
            self.embedder = batching.Batcher(EMBEDDINGS, limits, self._embed)
        if on is not None and on.completions:
            limits = self._limits(settings.max_batch_size, wait)
            self.completer = batching.Batcher(COMPLETIONS, limits, self._complete)
        self.chat_on = on is not None and on.chat
        # A call that goes alone counts as a batch of one request, hence the product.
        alone = settings.max_concurrent_batches * settings.max_batch_size
        self.limiters = {
            kind: batching.Limiter(kind, alone, settings.max_queue)
            for kind in (EMBEDDINGS, COMPLETIONS, CHAT)
        }
        self.flights: flights.Flights[Hashable, Reply] = flights.Flights()
        self._batched = {
            kind: metrics.upstream_calls_saved.labels(kind, "batched") for kind in self.limiters
        }
        self._shared = metrics.upstream_calls_saved.labels(CHAT, "shared")

    def _limits(self, size: int, wait: float, cost: float = float("inf")) -> batchqueue.Limits:
        s = self.settings
        return batchqueue.Limits(size, wait, s.max_concurrent_batches, s.max_queue, cost)

    @property
    def batchers(self) -> list[batching.Batcher[Hashable, Part, Reply]]:
        return [b for b in (self.embedder, self.completer) if b is not None]

    def start(self) -> None:
        for batcher in self.batchers:
            batcher.start()

    def close(self) -> None:
        """Draining: send what waits now; later requests go alone (the upstream is still open)."""
        for batcher in self.batchers:
            batcher.close()

    async def stop(self) -> None:
        """Answer everything waiting or in flight; the upstream may be closed afterwards."""
        await asyncio.gather(*(b.stop() for b in self.batchers))
        await self.flights.stop()

    # --- the endpoints ------------------------------------------------------------------------

    async def embeddings(self, request: Request, caller: Caller, payload: dict[str, Any]) -> Reply:
        if self.embedder is None:
            return await self.forward(EMBEDDINGS, request, caller, streaming=False)
        inputs = coalescing.parse(payload.get("input"))
        if inputs is None or self.embedder.closed or not cachekeys.faithful(request.body):
            return await self._alone(EMBEDDINGS, request, caller, streaming=False)
        group = coalescing.group_key(payload, "input", inputs.kind)
        key = (payer(caller), self.varies(request), group)
        part = Part(request, caller, payload, inputs)
        return await self.embedder.submit(key, part, len(inputs.items), inputs.tokens)

    async def completions(self, request: Request, caller: Caller, payload: dict[str, Any]) -> Reply:
        streaming = payload.get("stream") is True
        if self.completer is None:
            return await self.forward(COMPLETIONS, request, caller, streaming=streaming)
        inputs = None if streaming else coalescing.parse(payload.get("prompt"))
        alone = choices_per_prompt(payload) is None or not cachekeys.faithful(request.body)
        if inputs is None or alone or self.completer.closed:
            return await self._alone(COMPLETIONS, request, caller, streaming=streaming)
        group = coalescing.group_key(payload, "prompt", inputs.kind)
        key = (payer(caller), self.varies(request), group)
        part = Part(request, caller, payload, inputs)
        return await self.completer.submit(key, part, len(inputs.items))

    async def chat(self, request: Request, caller: Caller, payload: dict[str, Any]) -> Reply:
        streaming = payload.get("stream") is True
        if not self.chat_on:
            return await self.forward(CHAT, request, caller, streaming=streaming)
        if streaming or not self._shareable(request, payload):
            return await self._alone(CHAT, request, caller, streaming=streaming)
        # The tenant too: with a proxy-held key every tenant has the same credentials, and one
        # tenant must not receive (or time) another's answer.
        body = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
        key = (payer(caller), caller.tenant, self.varies(request), body)
        flight = self.flights.get(key)
        if flight is None:
            flight = self.flights.launch((key,), self._fly(request, caller))
            return copy(await self.flights.wait(flight))
        try:
            reply = copy(await self.flights.wait(flight, self.patience))
        except flights.AbandonedError:
            return await self._alone(CHAT, request, caller, streaming=False)
        self._shared.inc()
        if reply.status == 200:
            usage.saved(CHAT, reply.body)
        reply.headers.append((cachekeys.HEADER, b"shared"))
        return reply

    # --- chat flights -------------------------------------------------------------------------

    def _shareable(self, request: Request, payload: dict[str, Any]) -> bool:
        """May this chat request land another's flight? Never when it asked for a fresh answer
        (`no-cache`) or its body cannot be read exactly."""
        mode = self.settings.share_chat
        fresh = not cachekeys.directives(request.header(b"cache-control"))[0]
        if mode == "off" or fresh or not cachekeys.faithful(request.body):
            return False
        return mode == "always" or cachekeys.repeatable(payload)

    def varies(self, request: Request) -> bytes:
        """What else keeps requests apart: a merged call is sent with its first caller's query
        and headers, so callers whose varying headers differ never share one."""
        return self.variants.of(request.query, request.headers)

    async def _fly(self, request: Request, caller: Caller) -> Reply:
        reply = await self._alone(CHAT, request, caller, streaming=False)
        if reply.stream is None:
            return reply
        # An upstream that streams though asked not to: several callers share it, so read it.
        body = b"".join([chunk async for chunk in reply.stream])
        return Reply(reply.status, reply.headers, body)

    # --- calls that go alone ------------------------------------------------------------------

    async def _alone(
        self, kind: str, request: Request, caller: Caller, *, streaming: bool
    ) -> Reply:
        """One call for one request, within the endpoint's concurrency bound."""
        limiter = self.limiters[kind]
        await limiter.acquire()
        try:
            reply = await self.forward(kind, request, caller, streaming=streaming)
        except BaseException:
            limiter.release()
            raise
        if reply.stream is None:
            limiter.release()
            return reply
        held = batching.HeldStream(reply.stream, limiter.release)
        return Reply(reply.status, reply.headers, stream=held)

    # --- coalesced calls (run by the batchers) ------------------------------------------------

    async def _embed(self, key: Hashable, parts: list[Part]) -> list[Reply]:
        return await self._coalesce(EMBEDDINGS, "input", parts, coalescing.split_embeddings)

    async def _complete(self, key: Hashable, parts: list[Part]) -> list[Reply]:
        n = choices_per_prompt(parts[0].payload) or 1  # the same for all: `n` is in the key

        def split(body: bytes, inputs: Sequence[coalescing.Inputs]) -> list[bytes]:
            return coalescing.split_completions(body, inputs, n)

        return await self._coalesce(COMPLETIONS, "prompt", parts, split)

    async def _coalesce(
        self, kind: str, field: str, parts: list[Part], split: Split
    ) -> list[Reply]:
        replies, calls = await self._send(kind, field, parts, split)
        if len(parts) > calls:
            self._batched[kind].inc(len(parts) - calls)
        return replies

    async def _send(
        self, kind: str, field: str, parts: list[Part], split: Split
    ) -> tuple[list[Reply], int]:
        """An answer per part, and how many upstream calls it took."""
        first = parts[0]
        if len(parts) == 1:
            # One part is sent as its caller wrote it, and answered as the upstream answered it.
            return [await self._forward(kind, first.request, first.caller)], 1
        batch = tracing.new_id()
        caller = dataclasses.replace(
            first.caller, headers={**first.caller.headers, "x-request-id": batch.decode()}
        )
        body = merged(first, field, parts)
        reply = await self._forward(kind, first.request, caller, body)
        reply.headers.append((BATCH_HEADER, batch))
        if reply.status == 200:
            return divided(reply, parts, split), 1
        if reply.status not in SPLIT_STATUSES:
            return [copy(reply) for _ in parts], 1
        # Bisect: one bad input among n costs about 2·log2(n) more calls, n bad ones at most 2n-1.
        half = len(parts) // 2
        (left, a), (right, b) = await asyncio.gather(
            self._send(kind, field, parts[:half], split),
            self._send(kind, field, parts[half:], split),
        )
        return left + right, 1 + a + b

    async def _forward(
        self, kind: str, request: Request, caller: Caller, body: bytes | None = None
    ) -> Reply:
        try:
            return await self.forward(kind, request, caller, streaming=False, body=body)
        except errors.ProxyError as e:
            return error_reply(e)

    def __repr__(self) -> str:
        return f"<Dispatcher {self.batchers} chat {self.flights!r}>"


def merged(first: Part, field: str, parts: list[Part]) -> bytes:
    return coalescing.merge(first.payload, field, [p.inputs for p in parts])


def divided(reply: Reply, parts: list[Part], split: Split) -> list[Reply]:
    """Each part's own answer from a merged one; a 502 for all when it cannot be divided."""
    try:
        bodies = split(reply.body, [p.inputs for p in parts])
    except coalescing.MalformedAnswerError as e:
        log.warning("cannot divide an upstream answer among %d callers: %s", len(parts), e)
        failure = errors.upstream_bad_answer(f"cannot divide it among {len(parts)} callers: {e}")
        return [error_reply(failure) for _ in parts]
    return [Reply(200, list(reply.headers), body) for body in bodies]


def copy(reply: Reply) -> Reply:
    """The same answer for another caller (layers above may add headers to theirs)."""
    return Reply(reply.status, list(reply.headers), reply.body)


def payer(caller: Caller) -> tuple[str | None, ...]:
    """Who the upstream bills for a call: callers billed differently never share one."""
    headers = caller.headers
    return (caller.credentials, *(headers.get(name) for name in BILLING_HEADERS))


def choices_per_prompt(payload: dict[str, Any]) -> int | None:
    """`n` of a completions request, or None when it is not a positive integer."""
    n = payload.get("n", 1)
    if n is None:
        return 1
    return n if type(n) is int and n >= 1 else None
