"""`Deferral`: what the LLM routes call for a deferred request, and `/v1/sluice/jobs/{id}`.

A deferred request becomes an item in the store (`records.Item`, its id the job id). Its caller
either holds the connection and gets the answer when it comes (the batch's, or the deadline
fallback's), or, with `Prefer: respond-async`, gets `202 Accepted` at once with
`Location: /v1/sluice/jobs/{id}`, where `GET` answers 202 while the job is pending and then the
stored answer, exactly as the synchronous API would have given it, for `resultTtlSeconds`. A
job id is only found by its own tenant (`http.callers.Tenants`); another tenant gets a 404.

Answers say how they came in `x-sluice-deferred` (`batch`, `sync`, `error`) and name their
job in `x-sluice-job`; deferred requests bypass the response cache (`x-sluice-cache: bypass`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from sluice.api import LLMConfig
from sluice.proxy import metrics
from sluice.proxy.http import asgi, callers, errors
from sluice.proxy.http.asgi import Reply, Request
from sluice.proxy.http.callers import Caller
from sluice.proxy.llm import cachekeys, client, dispatching
from sluice.proxy.llm.deferred import asks, estimator, jobstore, provider, records, worker

JOBS_PREFIX = "/v1/sluice/jobs/"
JOB_ID = re.compile(r"job_[0-9a-f]{32}")
PAYER_HEADERS = frozenset({b"authorization", *(h.encode() for h in dispatching.BILLING_HEADERS)})
RECHECK_SECONDS = 1.0
"""How often a held caller looks in a shared store for an answer another replica kept."""
GRACE_SECONDS = 5.0

Dispatch = Callable[[Request, Caller, dict[str, Any]], Awaitable[Reply]]


class Deferral:
    """Deferred mode for one upstream."""

    def __init__(
        self,
        config: LLMConfig,
        upstream: client.Upstream,
        dispatcher: dispatching.Dispatcher,
        store: jobstore.JobStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = config.deferred
        self.upstream = upstream
        self.store = store
        self.clock = clock
        self.dispatch: Mapping[str, Dispatch] = {
            dispatching.CHAT: dispatcher.chat,
            dispatching.COMPLETIONS: dispatcher.completions,
            dispatching.EMBEDDINGS: dispatcher.embeddings,
        }
        self.latency = estimator.LatencyEstimator(
            self.settings.assumed_batch_latency_seconds,
            upstream.settings.timeout_seconds,
            self.settings.fallback_margin_seconds,
        )
        self.worker = worker.Worker(
            self.settings,
            store,
            provider.BatchAPI(upstream),
            self.latency,
            self.send,
            self.notify,
            self.route,
            clock,
        )
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.kept = PAYER_HEADERS | cachekeys.Variants(config.vary_headers).names
        """Request headers a job is sent with: who pays, and what selects the upstream's
        behaviour (`cachekeys.VARYING_HEADERS` and the policy's `varyHeaders`)."""

    async def start(self) -> None:
        await self.store.start()
        self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()
        await self.store.close()

    def ask(self, request: Request, payload: dict[str, Any]) -> asks.Ask | None:
        if not self.settings.enabled and request.header(asks.HEADER) is None:
            return None  # the common case, decided without looking further
        return asks.of(
            request.header(asks.HEADER), request.header(b"prefer"), payload, self.settings
        )

    # --- a deferred request -------------------------------------------------------------------

    async def answer(
        self, kind: str, request: Request, tenant: str, payload: dict[str, Any], ask: asks.Ask
    ) -> Reply:
        now = self.clock()
        query = request.query.decode("latin-1")
        kept = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers if k in self.kept
        }
        if self.upstream.api_key is not None:
            kept.pop("authorization", None)  # the proxy's own key is applied when sent
        group = records.Group(kind, cachekeys.model_of(payload), kept, query)
        item_id = "job_" + secrets.token_hex(16)
        item = records.Item(item_id, tenant, group.key, payload, now + ask.deadline_seconds, now)
        fits = self.latency.fits(ask.deadline_seconds, self.settings.flush_after_seconds)
        await self.store.add(item, group, waiting=fits)
        metrics.deferred_items.labels(kind).inc()
        if not fits:
            self.worker.rescue_soon(item_id, "admission")
        if ask.respond_async:
            return self.accepted(item)
        return await self.wait(item)

    async def wait(self, item: records.Item) -> Reply:
        """Hold the caller until its item is answered (by the deadline, or a little after)."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiters[item.id] = waiter
        limit = item.deadline + self.upstream.settings.timeout_seconds + GRACE_SECONDS
        try:
            while True:
                result = await self.store.result(item.id)
                if result is not None:
                    return rendered(item.id, result)
                remaining = limit - self.clock()
                if remaining <= 0:
                    raise errors.ProxyError(
                        504,
                        f"The deferred answer did not come by its deadline; it may still come "
                        f"at {JOBS_PREFIX}{item.id}.",
                        type="upstream_error",
                        code="deferred_timeout",
                    )
                recheck = RECHECK_SECONDS if self.store.shared else remaining
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, recheck)):
                        await asyncio.shield(waiter)
        finally:
            self.waiters.pop(item.id, None)

    def notify(self, item_id: str) -> None:
        waiter = self.waiters.get(item_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def accepted(self, item: records.Item) -> Reply:
        location = JOBS_PREFIX + item.id
        payload = {
            "id": item.id,
            "object": "sluice.job",
            "status": "pending",
            "deadline": int(item.deadline),
            "location": location,
        }
        retry = str(max(1, round(min(self.settings.poll_interval_seconds, 60))))
        headers = [(b"location", location.encode()), (b"retry-after", retry.encode())]
        headers += [(b"x-sluice-job", item.id.encode()), (b"x-sluice-cache", b"bypass")]
        return asgi.json_reply(202, payload, headers)

    # --- the job route ------------------------------------------------------------------------

    async def job(self, request: Request, tenant: str) -> Reply:
        """`GET /v1/sluice/jobs/{id}`: 202 while pending, then the answer; 404 for others'."""
        job_id = request.path[len(JOBS_PREFIX) :]
        item = await self.store.item(job_id) if JOB_ID.fullmatch(job_id) else None
        if item is None or item.tenant != tenant:
            raise errors.ProxyError(404, f"No job {job_id!r}.", code="job_not_found")
        result = await self.store.result(job_id)
        if result is not None:
            return rendered(job_id, result)
        return self.accepted(item)

    # --- what the worker is given -------------------------------------------------------------

    def headers(self, group: records.Group) -> dict[str, str]:
        """The headers a group's calls go with, the proxy's own key applied."""
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in group.headers.items()]
        return self.upstream.outgoing_headers(raw)

    def route(self, group: records.Group) -> provider.Route:
        return provider.Route(self.headers(group), group.query)

    async def send(self, group: records.Group, item: records.Item) -> Reply:
        """The item sent synchronously, as its caller would have: through the dispatcher."""
        headers = self.headers(group)
        body = orjson.dumps(item.body)
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in group.headers.items()]
        raw.append((b"content-type", b"application/json"))
        path = records.ENDPOINTS[group.kind]
        request = Request("POST", path, group.query.encode("latin-1"), raw, body)
        credentials = callers.digest(headers.get("authorization", ""))
        caller = Caller(headers, credentials, item.tenant)
        return await self.dispatch[group.kind](request, caller, item.body)

    def __repr__(self) -> str:
        return f"<Deferral store={self.store!r} waiting={len(self.waiters)} {self.worker!r}>"


def rendered(job_id: str, result: records.Result) -> Reply:
    headers = [
        (b"content-type", b"application/json"),
        (b"x-sluice-deferred", records.PATHS[result.path].encode()),
        (b"x-sluice-job", job_id.encode()),
        (b"x-sluice-cache", b"bypass"),
    ]
    if result.request_id:
        headers.append((b"x-request-id", result.request_id.encode("latin-1", "replace")))
    return Reply(result.status, headers, result.body)
