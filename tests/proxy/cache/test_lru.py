"""The in-memory LRU store: entry and byte bounds, TTL and the sweep, all on a fake clock."""

from __future__ import annotations

from sluice.proxy.cache import lru


def test_a_value_is_returned_until_its_deadline_and_not_after() -> None:
    store = lru.LRUStore(max_entries=10, max_bytes=10_000)
    assert store.put("k", b"v", expires_at=10.0, now=0.0)
    assert store.get("k", now=9.9) == b"v"
    assert store.get("k", now=10.0) is None
    assert len(store) == 0
    assert store.evictions["expired"] == 1


def test_the_least_recently_used_entry_goes_first_when_entries_are_full() -> None:
    store = lru.LRUStore(max_entries=2, max_bytes=10_000)
    store.put("a", b"1", 100, 0)
    store.put("b", b"2", 100, 0)
    assert store.get("a", 1) == b"1"  # `a` is now more recent than `b`
    store.put("c", b"3", 100, 2)
    assert store.get("b", 3) is None
    assert store.get("a", 3) == b"1"
    assert store.get("c", 3) == b"3"
    assert store.evictions["lru"] == 1


def test_bytes_count_keys_and_values_and_evict_until_under_the_bound() -> None:
    store = lru.LRUStore(max_entries=100, max_bytes=30)
    store.put("k1", b"x" * 8, 100, 0)  # 10 bytes
    store.put("k2", b"x" * 8, 100, 0)  # 20 bytes
    store.put("k3", b"x" * 8, 100, 0)  # 30 bytes: at the bound, nothing goes
    assert store.bytes == 30
    store.put("k4", b"x" * 18, 100, 0)  # 20 more: k1 and k2 must go
    assert list(store.keys()) == ["k3", "k4"]
    assert store.bytes == 30
    assert store.evictions["lru"] == 2


def test_an_entry_larger_than_the_byte_bound_is_refused_and_evicts_nothing() -> None:
    store = lru.LRUStore(max_entries=100, max_bytes=20)
    store.put("a", b"1", 100, 0)
    assert not store.put("big", b"x" * 30, 100, 0)
    assert store.get("a", 1) == b"1"
    assert store.get("big", 1) is None


def test_overwriting_a_key_replaces_its_bytes_and_deadline() -> None:
    store = lru.LRUStore(max_entries=10, max_bytes=1000)
    store.put("k", b"x" * 10, 5, 0)
    store.put("k", b"y" * 3, 50, 1)
    assert store.bytes == 4
    assert store.sweep(now=10) == 0  # the first deadline no longer applies
    assert store.get("k", 10) == b"yyy"


def test_sweep_drops_expired_entries_without_them_being_read() -> None:
    store = lru.LRUStore(max_entries=10, max_bytes=1000)
    store.put("short", b"1", 5, 0)
    store.put("long", b"2", 50, 0)
    assert store.sweep(now=6) == 1
    assert list(store.keys()) == ["long"]
    assert store.bytes == len("long") + 1


def test_a_dead_entry_is_not_stored() -> None:
    store = lru.LRUStore(max_entries=10, max_bytes=1000)
    assert not store.put("k", b"v", expires_at=5, now=5)
    assert len(store) == 0


def test_delete_where_removes_matching_keys_and_counts_them_but_not_as_evictions() -> None:
    store = lru.LRUStore(max_entries=10, max_bytes=1000)
    for key in ("a:1", "a:2", "b:1"):
        store.put(key, b"v", 100, 0)
    assert store.delete_where(lambda key: key.startswith("a:")) == 2
    assert list(store.keys()) == ["b:1"]
    assert store.delete_where(lambda key: key == "b:1") == 1
    assert store.delete_where(lambda key: key == "b:1") == 0
    assert store.bytes == 0
    assert sum(store.evictions.values()) == 0


def test_many_overwrites_keep_the_deadline_heap_bounded() -> None:
    store = lru.LRUStore(max_entries=10, max_bytes=1000)
    for i in range(10_000):
        store.put("k", b"v", 100 + i, 0)
    assert len(store._deadlines) < 200
    assert "entries=1/10" in repr(store)
