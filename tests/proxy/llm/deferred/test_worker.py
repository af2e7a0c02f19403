"""The deferred worker's loop, without a network: what a failing store does to its log."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sluice.api import DeferredSettings
from sluice.proxy.http import errors
from sluice.proxy.llm.deferred import estimator, jobstore, worker


async def test_a_store_that_fails_every_tick_is_logged_once_not_every_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Down(jobstore.MemoryJobStore):
        async def due(self, before: float) -> list[str]:
            raise errors.ProxyError(503, "The deferred-job store (Redis) cannot be used: down")

    settings = DeferredSettings(flush_after_seconds=0.01, poll_interval_seconds=0.01)
    latency = estimator.LatencyEstimator(60, 10, 5)
    ticking = worker.Worker(
        settings,
        Down(60),
        None,
        latency,
        None,
        None,
        None,  # type: ignore[arg-type]
    )
    with caplog.at_level(logging.WARNING, logger=worker.__name__):
        ticking.start()
        await asyncio.sleep(0.2)  # twenty ticks of 10 ms
        await ticking.stop()
    assert [r.getMessage() for r in caplog.records] == [
        "deferred worker: The deferred-job store (Redis) cannot be used: down"
    ]
