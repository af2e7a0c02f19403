"""Kubernetes resource quantities (`250m`, `1Gi`, `2`): their grammar and their value.

The CRD checks quantities at the API server (an OpenAPI pattern, and CEL's `quantity()` for
requests above limits); `value()` is the pydantic twin of that CEL comparison, so a spec
parsed outside the cluster is held to the same rule. Negative quantities are refused by the
grammar itself: no Pod takes one.
"""

from __future__ import annotations

import decimal
import re

# Kubernetes' own quantity grammar (as in the core types' OpenAPI), less the sign.
PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")
HUGEPAGES_PREFIX = "hugepages-"

SUFFIXES = {
    **{
        s: decimal.Decimal(1024) ** (i + 1)
        for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))
    },
    **{s: decimal.Decimal(10) ** e for s, e in (("n", -9), ("u", -6), ("m", -3), ("", 0))},
    **{s: decimal.Decimal(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
}
SPLIT = re.compile(r"^\+?([0-9.]+)(.*)$")


def value(quantity: int | str) -> decimal.Decimal:
    """The amount a quantity stands for, in base units (cores, bytes)."""
    if isinstance(quantity, int):
        return decimal.Decimal(quantity)
    match = SPLIT.match(quantity)
    if match is None or not re.match(PATTERN, quantity):
        raise ValueError(f"{quantity!r} is not a quantity")
    number, suffix = decimal.Decimal(match[1]), match[2]
    if suffix[:1] in ("e", "E"):
        return number * decimal.Decimal(10) ** decimal.Decimal(suffix[1:])
    return number * SUFFIXES[suffix]


def known(name: str) -> bool:
    """Whether a Pod's container accepts this resource name (extended resources aside)."""
    return name in RESOURCE_NAMES or name.startswith(HUGEPAGES_PREFIX)
