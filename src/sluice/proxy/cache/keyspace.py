"""The key layout every backend shares, and the selections of keys an invalidation deletes.

    {keyPrefix}{kind}:t{tenant16}:m{model16}:{digest32}

`kind` names the data (chat, completions, embeddings, tools_list, tool_results); `tenant16` and
`model16` are 64-bit hashes in hex of the tenant (`http.callers.Tenants`) and of the model (for
MCP data: the server), so the segments hold no glob characters and a Redis `SCAN MATCH` pattern
selects a tenant or a model exactly. What goes into the digest is each kind's own business
(`llm.cachekeys` for the LLM answers).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

SHARED = "*shared*"
"""The tenant of entries every caller may read (`shareAcrossTenants`, public MCP lists)."""

_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


@functools.lru_cache(maxsize=4096)
def tenant_id(tenant: str) -> str:
    """The tenant's key segment (64-bit hash, hex)."""
    return hashlib.blake2b(tenant.encode(), digest_size=8, person=b"tenant").hexdigest()


@functools.lru_cache(maxsize=4096)
def model_id(model: str) -> str:
    """The model's key segment (64-bit hash, hex)."""
    return hashlib.blake2b(model.encode(), digest_size=8, person=b"model").hexdigest()


def layout(prefix: str, kind: str, tenant: str, model: str, digest: str) -> str:
    return f"{prefix}{kind}:t{tenant_id(tenant)}:m{model_id(model)}:{digest}"


@dataclasses.dataclass(frozen=True, slots=True)
class Selection:
    """Which entries an invalidation deletes: all, or those of some kinds, tenants and/or one
    model (an empty field selects everything along it)."""

    tenants: tuple[str, ...] = ()
    """Tenants as `http.callers.Tenants` spells them (several spellings of one are fine)."""
    model: str | None = None
    kinds: tuple[str, ...] = ()

    def matches(self, prefix: str, key: str) -> bool:
        """Does `key` (in the layout above) fall in this selection?"""
        if not key.startswith(prefix):
            return False
        parts = key[len(prefix) :].split(":")
        if len(parts) != 4:
            return False
        if self.kinds and parts[0] not in self.kinds:
            return False
        if self.tenants and parts[1][1:] not in {tenant_id(t) for t in self.tenants}:
            return False
        return self.model is None or parts[2][1:] == model_id(self.model)

    def patterns(self, prefix: str) -> list[str]:
        """Redis `SCAN MATCH` patterns that together select exactly these entries."""
        head = prefix.translate(_GLOB_SPECIAL)
        kinds = self.kinds or ("*",)
        tenants = [f"t{tenant_id(t)}" for t in self.tenants] or ["t*"]
        model = f"m{model_id(self.model)}" if self.model is not None else "m*"
        return [f"{head}{k}:{t}:{model}:*" for k in kinds for t in tenants]
