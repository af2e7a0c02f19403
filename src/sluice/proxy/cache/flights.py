"""Single-flight: concurrent requests for the same thing make one upstream call.

The first caller launches the flight: its work runs as a task of its own, registered under every
key it will answer (one key for a whole answer, one per input for embeddings). Callers that want
one of those keys while it is under way wait for that task instead of calling the upstream.

Every caller waiting on a flight is one of its members, and waits shielded: a member that hangs
up cancels nothing for the others, but when the last member leaves before the flight has landed,
the flight is cancelled (and with it the upstream call nobody is waiting for any more). A
follower waits a bounded time (`patience`): a flight that outlasts it is abandoned by that
follower, who then makes its own call. The key is free again when the task ends. Reach: one
proxy process (one event loop), so no locks are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Coroutine, Hashable, Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class AbandonedError(Exception):
    """The flight will not answer this caller: it outlasted the caller's patience, or it was
    cancelled because its other members left. The caller makes its own call."""


class Flights(Generic[K, T]):
    """Flights under way, by key, with the members waiting on each."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[T]] = {}
        self._members: dict[asyncio.Task[T], int] = {}

    def get(self, key: K) -> asyncio.Task[T] | None:
        """The flight under way for `key`, if any."""
        return self._tasks.get(key)

    def launch(self, keys: Collection[K], work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `work` as the flight of every key in `keys` (none of which has one)."""
        held = tuple(keys)
        task = asyncio.get_running_loop().create_task(self._fly(held, work))
        for key in held:
            self._tasks[key] = task
        task.add_done_callback(lambda done: self._landed(held, done))
        return task

    async def wait(self, flight: asyncio.Task[T], patience: float | None = None) -> T:
        """The flight's outcome, as one of its members; `AbandonedError` after `patience`
        seconds, or when the flight was cancelled while this caller still wanted it."""
        with self.member(flight):
            try:
                async with asyncio.timeout(patience):
                    return await asyncio.shield(flight)
            except TimeoutError:
                raise AbandonedError from None
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if flight.cancelled() and current is not None and not current.cancelling():
                    raise AbandonedError from None
                raise

    @contextlib.contextmanager
    def member(self, flight: asyncio.Task[T]) -> Iterator[None]:
        """Count the block as a member of `flight`; the last member to leave it by an exception
        (hung up, out of patience) before the flight landed cancels it."""
        members = self._members
        members[flight] = members.get(flight, 0) + 1
        try:
            yield
        except BaseException:
            if self._leave(flight) == 0 and not flight.done():
                flight.cancel()
            raise
        self._leave(flight)

    async def stop(self) -> None:
        """Return when every flight under way has ended."""
        await asyncio.gather(*set(self._tasks.values()), return_exceptions=True)

    def _leave(self, flight: asyncio.Task[T]) -> int:
        left = self._members[flight] - 1
        if left:
            self._members[flight] = left
        else:
            del self._members[flight]
        return left

    async def _fly(self, keys: tuple[K, ...], work: Coroutine[Any, Any, T]) -> T:
        """`work`, its keys freed the moment it ends: a request that comes after the flight's
        first caller was answered finds no flight (a done-callback frees them a loop iteration
        later, which is left for a flight cancelled before it began)."""
        try:
            return await work
        finally:
            self._free(keys, asyncio.current_task())

    def _landed(self, keys: tuple[K, ...], flight: asyncio.Task[T]) -> None:
        self._free(keys, flight)
        if not flight.cancelled():
            flight.exception()  # retrieved here, so a flight whose callers all left logs nothing

    def _free(self, keys: tuple[K, ...], flight: asyncio.Task[Any] | None) -> None:
        for key in keys:
            if self._tasks.get(key) is flight:
                del self._tasks[key]

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        waiting = sum(self._members.values())
        return (
            f"<Flights keys={len(self._tasks)} tasks={len(set(self._tasks.values()))}"
            f" members={waiting}>"
        )
