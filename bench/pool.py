"""`ObjectPool[T]`: reuse of hot-path objects, to take allocations off the garbage collector.

Generic (a factory makes an object, a reset makes a returned one as new), bounded (at most
`size` idle objects are kept; the rest are left to the collector), and safe from threads and
tasks alike: a lock guards the idle list, and nothing inside it awaits, so no task switch can
come between a check and its change.

It lives here, beside its measurement (`bench.gcpressure`), not in the proxy: applied to the
reply's header lists and ASGI messages it made a cache hit dearer and changed no collections
(`docs/benchmarks.md`). In CPython an allocation from the type's free list costs about as much
as a pool's two calls, so a pool pays only for objects that are costly to make or that churn the
collector's generations; the proxy has none that measured so.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ObjectPool(Generic[T]):
    """At most `size` idle objects made by `factory`, each `reset` on its way back."""

    def __init__(self, factory: Callable[[], T], reset: Callable[[T], object], size: int) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, not {size}")
        self.factory = factory
        self.reset = reset
        self.size = size
        self.made = 0
        self.reused = 0
        self._idle: list[T] = []
        self._lock = threading.Lock()

    def acquire(self) -> T:
        """An idle object, or a new one when none is idle."""
        with self._lock:
            if self._idle:
                self.reused += 1
                return self._idle.pop()
            self.made += 1
        return self.factory()

    def release(self, item: T) -> None:
        """Give `item` back; it is reset, and kept only while fewer than `size` are idle. The
        caller must not touch it afterwards."""
        self.reset(item)
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(item)

    @contextlib.contextmanager
    def borrowed(self) -> Iterator[T]:
        """An object for the length of a `with` block, given back even when the block fails."""
        item = self.acquire()
        try:
            yield item
        finally:
            self.release(item)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def __repr__(self) -> str:
        name = getattr(self.factory, "__name__", repr(self.factory))
        return (
            f"<ObjectPool {name} idle={self.idle}/{self.size} made={self.made} "
            f"reused={self.reused}>"
        )
