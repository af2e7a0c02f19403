"""What the simulated calls would have cost: the public list prices of the simulated models, and
the bill of a call log (synchronous calls at full price, Batch API items at half).

Prices are dollars per million tokens (input, output), as OpenAI lists them for these models;
the Batch API charges `BATCH_DISCOUNT` of them. Tests use :func:`bill` to show what a run cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from tests.support.simulator import state

PRICES: Mapping[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-3.5-turbo-instruct": (1.50, 2.00),
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
    "text-embedding-ada-002": (0.10, 0.0),
}
BATCH_DISCOUNT = 0.5


@dataclasses.dataclass(frozen=True)
class Bill:
    """Dollars and the calls that made them, split by how they were billed."""

    sync_dollars: float
    batch_dollars: float
    sync_calls: int
    batch_items: int

    @property
    def dollars(self) -> float:
        return self.sync_dollars + self.batch_dollars


def price(call: state.CallRecord) -> float:
    """Full (synchronous) price of one call's usage; 0 for calls without usage."""
    if call.usage is None or call.model not in PRICES:
        return 0.0
    per_input, per_output = PRICES[call.model]
    prompt = call.usage.get("prompt_tokens", 0)
    completion = call.usage.get("completion_tokens", 0)
    return (prompt * per_input + completion * per_output) / 1_000_000


def bill(stats: state.SimStats) -> Bill:
    """The bill of everything in the call log: what a provider would charge for it."""
    sync = [c for c in stats.calls if c.usage is not None]
    return Bill(
        sync_dollars=_total(sync),
        batch_dollars=_total(stats.batch_calls) * BATCH_DISCOUNT,
        sync_calls=len(sync),
        batch_items=len(stats.batch_calls),
    )


def _total(calls: Iterable[state.CallRecord]) -> float:
    return sum(price(c) for c in calls)
