"""The in-memory store of the `memory` and `tiered` caches: LRU, TTL, bounded entries and bytes.

Pure decisions, no clock and no I/O: every call that depends on time takes `now` (monotonic
seconds), so expiry and eviction are tested with plain numbers. `memory.MemoryCache` drives it
from the event loop (one thread, no awaits inside a call, hence no locks) and exports its counts.

Bytes are counted as `len(key) + len(value)`: the data callers think of, not Python's per-object
overhead (roughly 200 bytes an entry), which `maxEntries` bounds in turn.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Callable, Iterable

Item = tuple[bytes, float]
"""(value, expires_at)."""


class LRUStore:
    """An LRU map from key to bytes with a deadline per entry."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions: collections.Counter[str] = collections.Counter()
        """Running totals of evictions by reason: `lru` (a bound was reached) or `expired`."""
        self._items: collections.OrderedDict[str, Item] = collections.OrderedDict()
        # (expires_at, key) for the sweep; stale pairs (overwritten entries) are skipped there.
        self._deadlines: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, now: float) -> bytes | None:
        """The live value under `key`, which becomes the most recently used; None if absent."""
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= now:
            self._drop(key, "expired")
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, value: bytes, expires_at: float, now: float) -> bool:
        """Store `value` until `expires_at`, evicting least recently used entries to make room.

        Returns False (and stores nothing) when the entry alone exceeds `max_bytes` or is dead.
        """
        size = len(key) + len(value)
        if size > self.max_bytes or expires_at <= now:
            return False
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(key) + len(old[0])
        self._items[key] = (value, expires_at)
        self.bytes += size
        heapq.heappush(self._deadlines, (expires_at, key))
        self._make_room()
        self._compact()
        return True

    def delete_where(self, matches: Callable[[str], bool]) -> int:
        """Delete every entry whose key `matches`; returns how many went."""
        doomed = [key for key in self._items if matches(key)]
        for key in doomed:
            self._drop(key, None)
        return len(doomed)

    def sweep(self, now: float) -> int:
        """Drop the entries whose deadline has passed; returns how many went."""
        dropped = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            expires_at, key = heapq.heappop(self._deadlines)
            item = self._items.get(key)
            if item is not None and item[1] == expires_at:
                self._drop(key, "expired")
                dropped += 1
        return dropped

    def keys(self) -> Iterable[str]:
        return self._items.keys()

    def _make_room(self) -> None:
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            key = next(iter(self._items))
            self._drop(key, "lru")

    def _compact(self) -> None:
        # Overwrites leave stale deadlines behind; rebuild once they outnumber the live ones.
        if len(self._deadlines) > 2 * len(self._items) + 64:
            self._deadlines = [(item[1], key) for key, item in self._items.items()]
            heapq.heapify(self._deadlines)

    def _drop(self, key: str, reason: str | None) -> None:
        value, _ = self._items.pop(key)
        self.bytes -= len(key) + len(value)
        if reason is not None:
            self.evictions[reason] += 1

    def __repr__(self) -> str:
        return (
            f"<LRUStore entries={len(self._items)}/{self.max_entries} "
            f"bytes={self.bytes}/{self.max_bytes}>"
        )
