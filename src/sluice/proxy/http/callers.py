"""Who is asking: the `Caller` of a request, the credential digest, and the tenant rule.

Two questions are answered about every caller, both with hashes so no secret is kept or logged:
who the upstream bills (`Caller.credentials`: requests are only merged when it is equal) and
whose cache entries it may read (`Caller.tenant`). The tenant is the value of the configured
tenant header when the request has one, otherwise the caller's own credentials. `Tenants` is the
one place that rule lives; the admin API asks it how a tenant named by an operator is spelt.
"""

from __future__ import annotations

import dataclasses
import hashlib

from sluice.proxy.http.asgi import Request

HEADER_TENANT = "h:"
"""Prefix of a tenant named by the tenant header, so it never equals a credential's digest."""


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as far as sharing is concerned."""

    headers: dict[str, str]
    """Headers to send upstream (hop-by-hop removed, configured API key applied)."""
    credentials: str
    """Hash of the `Authorization` sent upstream."""
    tenant: str
    """`Tenants.of` the request."""


class Tenants:
    """The tenant rule: the tenant header's value if configured and present (and not blank),
    else the caller's own credentials (`Authorization`, or Azure's `api-key`): a blank header
    must never put its callers into one shared bucket. With `requires_key` the header counts
    only beside credentials, so naming a tenant alone opens none of its entries."""

    def __init__(self, header: str | None, *, requires_key: bool = True) -> None:
        # Lower-cased and encoded once: this runs on every cache hit.
        self.header = header.lower().encode() if header else None
        self.requires_key = requires_key

    def of(self, request: Request) -> str:
        own = request.header(b"authorization") or request.header(b"api-key") or b""
        named = request.header(self.header) if self.header else None
        if (
            named is not None
            and named.strip()  # an empty header names no tenant
            and (own or not self.requires_key)
        ):
            return HEADER_TENANT + digest(named.decode("latin-1"))
        return digest(own.decode("latin-1"))

    def spellings(self, tenant: str) -> tuple[str, ...]:
        """`of()` for every request a tenant named as callers present it could make: the header's
        value, or an API key sent as `Authorization: Bearer` or as `api-key`."""
        if self.header:
            return (HEADER_TENANT + digest(tenant),)
        return (digest("Bearer " + tenant), digest(tenant))

    def __repr__(self) -> str:
        return f"<Tenants header={self.header!r} requires_key={self.requires_key}>"


def digest(value: str) -> str:
    """A short, stable, non-reversible identifier for a secret."""
    return hashlib.blake2b(value.encode(), digest_size=12).hexdigest()
