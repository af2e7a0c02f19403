"""How long things take, learnt from recent jobs: the latency estimator of the deadline rule.

Two exponentially weighted means, each starting from an assumption until observations replace
it: the time from submitting a Batch API job to its results, and the time of one synchronous
call. An item may wait in a batch while its deadline leaves room for a synchronous call and the
policy's margin (`reserve`); an item whose deadline is nearer than a whole batch at its arrival
is sent synchronously at once (`fits`). Pure: times are given, not read.
"""

from __future__ import annotations

WEIGHT = 0.3
"""Weight of the newest observation: a few jobs move the estimate, one outlier does not own it."""


class Mean:
    """An exponentially weighted mean that starts at an assumed value."""

    def __init__(self, assumed: float) -> None:
        self.value = assumed
        self.observed = 0

    def observe(self, seconds: float) -> None:
        self.value = seconds if not self.observed else WEIGHT * seconds + (1 - WEIGHT) * self.value
        self.observed += 1

    def __repr__(self) -> str:
        return f"{self.value:.3g}s/{self.observed}"


class LatencyEstimator:
    """Expected batch and synchronous latencies, and the two decisions made from them."""

    def __init__(self, batch_seconds: float, sync_seconds: float, margin_seconds: float) -> None:
        self.batch = Mean(batch_seconds)
        self.sync = Mean(sync_seconds)
        self.margin = margin_seconds

    @property
    def reserve(self) -> float:
        """Time before a deadline at which an unanswered item must go synchronously."""
        return self.sync.value + self.margin

    def fits(self, deadline_seconds: float, flush_after: float) -> bool:
        """Can an item with this much time left wait for a batch (its flush, its run)?"""
        return deadline_seconds > flush_after + self.batch.value + self.reserve

    def __repr__(self) -> str:
        return f"<LatencyEstimator batch={self.batch!r} sync={self.sync!r} margin={self.margin:g}s>"
