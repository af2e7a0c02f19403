"""Single-flight: concurrent misses on one key make one upstream call (stampede protection).

The first caller to miss a key leads: it fetches and then `land`s the outcome. Callers that miss
the same key while the flight is under way `join` it and wait for that outcome instead of calling
the upstream themselves. Scope: one proxy process (one event loop), so no locks are needed.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Flights(Generic[T]):
    """Flights under way, by key; an outcome of None tells followers to fetch for themselves."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[T | None]] = {}

    def join(self, key: str) -> asyncio.Future[T | None] | None:
        """The flight under way for `key` (await it shielded), or None: the caller now leads one
        and must `land` it, whatever happens."""
        future = self._pending.get(key)
        if future is not None:
            return future
        self._pending[key] = asyncio.get_running_loop().create_future()
        return None

    def land(self, key: str, outcome: T | None) -> None:
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(outcome)

    async def wait(self, future: asyncio.Future[T | None]) -> T | None:
        # Shielded: a follower that gives up (its caller went away) must not cancel the flight.
        return await asyncio.shield(future)

    def __len__(self) -> int:
        return len(self._pending)

    def __repr__(self) -> str:
        return f"<Flights pending={len(self._pending)}>"
