"""Single-flight: concurrent requests for the same thing make one upstream call.

The first caller launches the flight: its work runs as a task of its own, registered under every
key it will answer (one key for a whole answer, one per input for embeddings). Callers that want
one of those keys while it is under way wait for that task instead of calling the upstream.
Every caller waits shielded, so a caller that hangs up (the first one included) cancels nothing
for the others. The key is free again when the task ends. Reach: one proxy process (one event
loop), so no locks are needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Flights(Generic[K, T]):
    """Flights under way, by key."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[T]] = {}

    def get(self, key: K) -> asyncio.Task[T] | None:
        """The flight under way for `key`, if any."""
        return self._tasks.get(key)

    def launch(self, keys: Collection[K], work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `work` as the flight of every key in `keys` (none of which has one)."""
        task = asyncio.get_running_loop().create_task(work)
        held = tuple(keys)
        for key in held:
            self._tasks[key] = task
        task.add_done_callback(lambda done: self._landed(held, done))
        return task

    async def wait(self, flight: asyncio.Task[T]) -> T:
        """The flight's outcome; a caller cancelled while waiting leaves the flight running."""
        return await asyncio.shield(flight)

    async def stop(self) -> None:
        """Return when every flight under way has ended."""
        await asyncio.gather(*set(self._tasks.values()), return_exceptions=True)

    def _landed(self, keys: tuple[K, ...], flight: asyncio.Task[T]) -> None:
        for key in keys:
            if self._tasks.get(key) is flight:
                del self._tasks[key]
        if not flight.cancelled():
            flight.exception()  # retrieved here, so a flight whose callers all left logs nothing

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"<Flights keys={len(self._tasks)} tasks={len(set(self._tasks.values()))}>"
