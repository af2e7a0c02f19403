"""The loop-only metric classes export exactly what prometheus_client's own classes would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sluice.proxy import metrics

BUCKETS = (0.001, 0.01, 0.1, 1.0)
OBSERVED = (0.0005, 0.001, 0.05, 0.1, 3.0, 0.01)


def test_loop_counter_exposition_equals_prometheus_clients() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = metrics.LoopCounter("x_total", "Things.", ["kind"], registry=ours)
    reference = Counter("x_total", "Things.", ["kind"], registry=theirs)
    for kind, amount in (("a", 1), ("b", 2.5), ("a", 3)):
        loop.labels(kind).inc(amount)
        reference.labels(kind).inc(amount)
    assert generate_latest(ours) == without_created(generate_latest(theirs))


def test_loop_histogram_exposition_equals_prometheus_clients() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = metrics.LoopHistogram("t_seconds", "Time.", ["route"], BUCKETS, registry=ours)
    reference = Histogram("t_seconds", "Time.", ["route"], buckets=BUCKETS, registry=theirs)
    for value in OBSERVED:
        loop.labels("r").observe(value)
        reference.labels("r").observe(value)
    # Bucket edges are `le`: 0.001 and 0.1 fall in their own bucket, 3.0 only in +Inf.
    assert generate_latest(ours) == without_created(generate_latest(theirs))


def without_created(exposition: bytes) -> bytes:
    """prometheus_client adds `_created` series unless disabled; the proxy disables them."""
    return b"".join(
        line for line in exposition.splitlines(keepends=True) if b"_created" not in line
    )
