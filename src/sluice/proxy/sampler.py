"""Runtime metrics sampled on an interval: event-loop lag, asyncio tasks, pool connections.

Given the session pools to watch (the LLM upstream's, the MCP servers'), not the app, so it
sits below everything it samples.

Process and GC metrics come from prometheus_client's default collectors; this adds what only
the running loop can see. The loop-lag probe is the one cost that recurs: one wake-up a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from sluice.proxy import metrics, tasks
from sluice.proxy.upstream import sessions

INTERVAL_SECONDS = 1.0


class Sampler:
    """Refreshes the runtime gauges every `interval` seconds and before every scrape."""

    def __init__(
        self, pools: Sequence[sessions.SessionPool], interval: float = INTERVAL_SECONDS
    ) -> None:
        self.pools = pools
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sluice-sampler")

    async def stop(self) -> None:
        await tasks.cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            planned = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            # How much later than planned the loop got back to us: time other work held it.
            metrics.event_loop_lag.set(max(0.0, time.perf_counter() - planned))
            self.sample()

    def sample(self) -> None:
        metrics.asyncio_tasks.set(len(asyncio.all_tasks()))
        for pool in self.pools:
            for index, connector in enumerate(pool.connectors()):
                client = str(index)
                in_use, idle = connector.in_use_count(), connector.idle_count()
                metrics.pool_connections.labels(pool.name, client, "in_use").set(in_use)
                metrics.pool_connections.labels(pool.name, client, "idle").set(idle)
                metrics.pool_waiting.labels(pool.name, client).set(connector.waiting_count())
                metrics.pool_limit.labels(pool.name, client).set(connector.limit)

    def __repr__(self) -> str:
        return f"<Sampler interval={self.interval:g}s running={self._task is not None}>"
