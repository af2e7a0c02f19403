"""The deferred worker: one task per proxy that submits, polls, answers and rescues.

Every tick it does, in order:

1. rescue: open items whose deadline is within the estimator's `reserve` are claimed and sent
   synchronously (the `send` it is given: the dispatcher, at full price);
2. flush: a group with `maxItemsPerBatch` waiting items, or whose oldest waited `flushAfter`,
   is taken out of the queue, uploaded as JSONL and created as a Batch API job;
3. poll: each submitted job is read when its backoff (from `pollInterval`, doubled, capped)
   says so; a job whose items were all answered otherwise is cancelled, an ended one settled:
   every output or error line with a `response` answers its item (once: see `jobstore.claim`),
   and the items it left without one are queued again or failed (`onIncomplete`).

The state is in the store, so a restarted worker (or another replica's) takes up where this
one stopped: it polls every job the store lists. Failures are logged and retried next tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from sluice.api import DeferredSettings
from sluice.proxy import metrics, tasks
from sluice.proxy.http import errors
from sluice.proxy.http.asgi import Reply
from sluice.proxy.llm import usage
from sluice.proxy.llm.deferred import estimator, jobstore, provider, records

log = logging.getLogger(__name__)

RESCUERS = 32
"""Synchronous fallback calls at once, per proxy."""
LOG_INTERVAL_SECONDS = 10.0
"""At most one failed-tick message in this long: a store that is down fails every tick."""

Send = Callable[[records.Group, records.Item], Awaitable[Reply]]
Notify = Callable[[str], None]


class Worker:
    """Submits groups as Batch API jobs, polls and settles them, and rescues late items."""

    def __init__(
        self,
        settings: DeferredSettings,
        store: jobstore.JobStore,
        api: provider.BatchAPI,
        latency: estimator.LatencyEstimator,
        send: Send,
        notify: Notify,
        route: Callable[[records.Group], provider.Route],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.api = api
        self.latency = latency
        self.send = send
        self.notify = notify
        self.route = route
        self.clock = clock
        cadence = min(settings.flush_after_seconds, settings.poll_interval_seconds) / 2
        self.tick = min(1.0, max(0.01, cadence))
        self.polls: dict[str, tuple[float, float]] = {}
        """Job id -> (next poll time, current interval), for this process's backoff."""
        self.busy: set[str] = set()
        """Items being rescued and jobs being submitted or settled here, not to start twice."""
        self.running: set[asyncio.Task[None]] = set()
        self.rescuers = asyncio.Semaphore(RESCUERS)
        self.task: asyncio.Task[None] | None = None
        self._last_log = -LOG_INTERVAL_SECONDS
        self._unlogged = 0

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="sluice-deferred-worker")

    async def stop(self) -> None:
        """Stop ticking; let rescues and submissions under way finish (their items are claimed
        or taken, so cutting them would lose them)."""
        await tasks.cancel(self.task)
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)

    async def run(self) -> None:
        while True:
            try:
                await self.step(self.clock())
            except errors.ProxyError as e:
                self.failed(e.message)
            except Exception:
                log.exception("deferred worker tick failed")
            await asyncio.sleep(self.tick)

    def failed(self, message: str) -> None:
        """Log a tick that failed (the store is unavailable), at most once a log interval."""
        now = time.monotonic()
        if now - self._last_log < LOG_INTERVAL_SECONDS:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more failed ticks since)" if self._unlogged else ""
        log.warning("deferred worker: %s%s", message, more)
        self._last_log = now
        self._unlogged = 0

    async def step(self, now: float) -> None:
        for item_id in await self.store.due(now + self.latency.reserve):
            self.rescue_soon(item_id, "deadline")
        await self.flush(now)
        await self.poll(now)

    def spawn(self, work: Awaitable[None], mark: str) -> None:
        self.busy.add(mark)

        async def running() -> None:
            try:
                await work
            except Exception:
                log.exception("deferred work %s failed", mark)
            finally:
                self.busy.discard(mark)

        task = asyncio.create_task(running())
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    # --- rescue: the deadline fallback --------------------------------------------------------

    def rescue_soon(self, item_id: str, reason: str) -> None:
        if item_id not in self.busy:
            self.spawn(self.rescue(item_id, reason), item_id)

    async def rescue(self, item_id: str, reason: str) -> None:
        if not await self.store.claim(item_id):
            return  # answered meanwhile, here or elsewhere
        item = await self.store.item(item_id)
        group = await self.store.group(item.group) if item is not None else None
        if item is None or group is None:
            return  # its record is gone (past its time): nobody is left to answer
        metrics.deferred_fallbacks.labels(reason).inc()
        async with self.rescuers:
            started = time.monotonic()
            try:
                reply = await self.send(group, item)
            except errors.ProxyError as e:
                result = records.Result(e.status, e.body(), records.SYNC)
            else:
                self.latency.sync.observe(time.monotonic() - started)
                body = (
                    reply.body
                    if reply.stream is None
                    else b"".join([c async for c in reply.stream])
                )
                request_id = _header(reply, b"x-request-id")
                result = records.Result(reply.status, body, records.SYNC, request_id)
        await self.answer(group.kind, item_id, result)

    async def answer(self, kind: str, item_id: str, result: records.Result) -> None:
        """Keep an item's result (claimed already) and wake its caller if it waits here."""
        await self.store.finish(item_id, result)
        metrics.deferred_answers.labels(kind, records.PATHS[result.path]).inc()
        self.notify(item_id)

    # --- flush: waiting items become jobs -----------------------------------------------------

    async def flush(self, now: float) -> None:
        size = self.settings.max_items_per_batch
        for group in await self.store.groups():
            count, oldest = await self.store.waiting(group)
            if not count:
                await self.store.forget(group)  # or every group ever seen costs every tick
                continue
            while count and (
                count >= size or now - (oldest or now) >= self.settings.flush_after_seconds
            ):
                items = await self.store.take(group, size)
                if not items:
                    break
                self.spawn(self.submit(group, items), "submit:" + items[0].id)
                count -= len(items)

    async def submit(self, key: str, items: list[records.Item]) -> None:
        group = await self.store.group(key)
        if group is None:
            return
        open_ids = set(await self.store.still_open([i.id for i in items]))
        items = [i for i in items if i.id in open_ids]
        if not items:
            return
        content = b"\n".join(item.line(group.kind) for item in items) + b"\n"
        route = self.route(group)
        try:
            file_id = await self.api.upload(route, content)
            batch = await self.api.create(route, file_id, records.ENDPOINTS[group.kind])
        except provider.ProviderError as e:
            log.warning(
                "deferred: submitting %d items failed (%s); they wait for the next try",
                len(items),
                e,
            )
            await self.store.requeue(items)
            return
        job = records.Job(str(batch["id"]), key, [i.id for i in items], self.clock())
        await self.store.submitted(job)
        metrics.deferred_batches.labels("submitted").inc()
        log.info("deferred: submitted %s with %d items", job.id, len(items))

    # --- poll: jobs are read, settled, or abandoned ------------------------------------------

    async def poll(self, now: float) -> None:
        first = self.settings.poll_interval_seconds
        jobs = await self.store.jobs()
        for ended in self.polls.keys() - {job.id for job in jobs}:
            del self.polls[ended]  # settled by another replica
        for job in jobs:
            when, _ = self.polls.get(job.id, (job.submitted_at + first, first))
            if now >= when and job.id not in self.busy:
                self.spawn(self.check(job), job.id)

    async def check(self, job: records.Job) -> None:
        group = await self.store.group(job.group)
        if group is None:
            await self.store.ended(job.id)
            return
        route = self.route(group)
        try:
            if not await self.store.still_open(job.items):
                await self.abandon(job, route)
                return
            batch = await self.api.retrieve(route, job.id)
            if batch.get("status") not in provider.TERMINAL:
                self.later(job)
                return
            await self.settle(job, group, batch, route)
        except provider.ProviderError as e:
            log.warning("deferred: job %s: %s; polled again later", job.id, e)
            self.later(job)

    def later(self, job: records.Job) -> None:
        _, interval = self.polls.get(job.id, (0.0, self.settings.poll_interval_seconds))
        longest = max(self.settings.max_poll_interval_seconds, self.settings.poll_interval_seconds)
        self.polls[job.id] = (self.clock() + interval, min(interval * 2, longest))

    async def abandon(self, job: records.Job, route: provider.Route) -> None:
        """Every item of the job was answered otherwise: cancel it, so it costs no more."""
        try:
            await self.api.cancel(route, job.id)
        except provider.ProviderError as e:
            log.info("deferred: cancelling %s: %s", job.id, e)  # it may have ended meanwhile
        await self.close(job, "abandoned")

    async def settle(
        self, job: records.Job, group: records.Group, batch: dict[str, Any], route: provider.Route
    ) -> None:
        lines = await self.api.lines(route, batch.get("output_file_id"))
        lines += await self.api.lines(route, batch.get("error_file_id"))
        mine = set(job.items)
        answered: set[str] = set()
        for line in lines:
            item_id, result = _result(line)
            if item_id not in mine or result is None:
                continue
            answered.add(item_id)
            if await self.store.claim(item_id):
                if result.status == 200:
                    self.count_savings(group.model, result.body)
                await self.answer(group.kind, item_id, result)
        await self.incomplete(group, [i for i in job.items if i not in answered])
        status = str(batch.get("status"))
        if status == "completed":
            self.latency.batch.observe(self.clock() - job.submitted_at)
        await self.close(job, status)

    async def incomplete(self, group: records.Group, item_ids: list[str]) -> None:
        """Items a job ended without answering: queued again, or failed, as the policy says."""
        open_ids = await self.store.still_open(item_ids)
        if not open_ids:
            return
        if self.settings.on_incomplete == "resend":
            found = [await self.store.item(i) for i in open_ids]
            await self.store.requeue(i for i in found if i is not None)
            return
        failure = errors.ProxyError(
            502,
            "The provider's batch job ended without answering this request.",
            type="upstream_error",
            code="deferred_incomplete",
        )
        for item_id in open_ids:
            if await self.store.claim(item_id):
                await self.answer(
                    group.kind, item_id, records.Result(502, failure.body(), records.FAILED)
                )

    async def close(self, job: records.Job, state: str) -> None:
        await self.store.ended(job.id)
        self.polls.pop(job.id, None)
        metrics.deferred_batches.labels(state).inc()
        metrics.deferred_batch_duration.observe(self.clock() - job.submitted_at)
        log.info("deferred: job %s ended %s", job.id, state)

    def count_savings(self, model: str, body: bytes) -> None:
        counts = usage.from_body(body)
        if counts is None:
            return
        prompt, completion = counts
        metrics.deferred_tokens.labels("prompt").inc(prompt)
        metrics.deferred_tokens.labels("completion").inc(completion)
        price = self.settings.prices.get(model)
        if price is not None:
            full = (prompt * price.input_per_million + completion * price.output_per_million) / 1e6
            metrics.deferred_saved.inc(full * self.settings.savings_ratio)

    def __repr__(self) -> str:
        jobs, busy = len(self.polls), len(self.busy)
        return f"<Worker tick={self.tick:g}s jobs={jobs} busy={busy} {self.latency!r}>"


def _result(line: dict[str, Any]) -> tuple[str | None, records.Result | None]:
    """(custom_id, its result) of an output or error line; no result for an `error` line (the
    job never ran the item: expired, cancelled) or a line that does not parse."""
    item_id = line.get("custom_id")
    response = line.get("response")
    if not isinstance(item_id, str) or not isinstance(response, dict):
        return (item_id if isinstance(item_id, str) else None), None
    status = response.get("status_code")
    if type(status) is not int or not 100 <= status <= 599:
        return item_id, None
    request_id = response.get("request_id")
    body = orjson.dumps(response.get("body"))
    return item_id, records.Result(
        status, body, records.BATCH, request_id if isinstance(request_id, str) else ""
    )


def _header(reply: Reply, name: bytes) -> str:
    for key, value in reply.headers:
        if key == name:
            return value.decode("latin-1")
    return ""
