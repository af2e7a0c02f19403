"""The deferred worker without a network: its log when the store fails, its backoffs of jobs."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from sluice.api import DeferredSettings
from sluice.proxy.http import errors
from sluice.proxy.llm.deferred import estimator, jobstore, records, worker


def idle_worker(settings: DeferredSettings, store: jobstore.JobStore) -> worker.Worker:
    """A worker over `store` with no Batch API, sender or waiters: for ticks that reach none."""
    latency = estimator.LatencyEstimator(60, 10, 5)
    nothing: Any = None
    return worker.Worker(settings, store, nothing, latency, nothing, nothing, nothing, lambda: 0.0)


async def test_a_store_that_fails_every_tick_is_logged_once_not_every_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Down(jobstore.MemoryJobStore):
        async def due(self, before: float) -> list[str]:
            raise errors.ProxyError(503, "The deferred-job store (Redis) cannot be used: down")

    settings = DeferredSettings(flush_after_seconds=0.01, poll_interval_seconds=0.01)
    ticking = idle_worker(settings, Down(60))
    with caplog.at_level(logging.WARNING, logger=worker.__name__):
        ticking.start()
        await asyncio.sleep(0.2)  # twenty ticks of 10 ms
        await ticking.stop()
    assert [r.getMessage() for r in caplog.records] == [
        "deferred worker: The deferred-job store (Redis) cannot be used: down"
    ]


async def test_a_job_another_replica_settled_leaves_no_backoff_behind() -> None:
    store = jobstore.MemoryJobStore(60, clock=lambda: 0.0)
    polling = idle_worker(DeferredSettings(poll_interval_seconds=10), store)
    await store.submitted(records.Job("batch_1", "group", ["job_1"], 0.0))
    polling.later(records.Job("batch_1", "group", ["job_1"], 0.0))
    await polling.poll(now=0.0)
    assert set(polling.polls) == {"batch_1"}
    await store.ended("batch_1")  # elsewhere
    await polling.poll(now=0.0)
    assert polling.polls == {}
