"""The tenant rule and its spellings: one tenant, however a caller presents it, is one key."""

from __future__ import annotations

from sluice.proxy.http import callers
from sluice.proxy.http.asgi import Request


def request(*headers: tuple[bytes, bytes]) -> Request:
    return Request("POST", "/v1/chat/completions", b"", list(headers), b"{}")


def test_without_a_tenant_header_the_tenant_is_the_callers_credentials() -> None:
    tenants = callers.Tenants(None)
    bearer = tenants.of(request((b"authorization", b"Bearer sk-a")))
    azure = tenants.of(request((b"api-key", b"sk-a")))
    assert bearer != tenants.of(request((b"authorization", b"Bearer sk-b")))
    assert set(tenants.spellings("sk-a")) == {bearer, azure}
    assert "sk-a" not in bearer


def test_a_tenant_header_names_the_tenant_whatever_the_credentials() -> None:
    tenants = callers.Tenants("X-Tenant")
    a = tenants.of(request((b"x-tenant", b"team-a"), (b"authorization", b"Bearer sk-1")))
    also_a = tenants.of(request((b"x-tenant", b"team-a"), (b"authorization", b"Bearer sk-2")))
    assert a == also_a
    assert tenants.spellings("team-a") == (a,)


def test_a_header_tenant_never_equals_a_credential_tenant_of_the_same_text() -> None:
    tenants = callers.Tenants("x-tenant", requires_key=False)
    by_header = tenants.of(request((b"x-tenant", b"sk-a")))
    by_key = tenants.of(request((b"api-key", b"sk-a")))
    assert by_header != by_key


def test_a_tenant_header_without_credentials_names_no_tenant_unless_trusted_alone() -> None:
    keyless = request((b"x-tenant", b"team-a"))
    keyed = request((b"x-tenant", b"team-a"), (b"authorization", b"Bearer sk-1"))
    tenants = callers.Tenants("x-tenant")
    assert tenants.of(keyless) != tenants.of(keyed)
    assert tenants.of(keyless) == tenants.of(request())  # the credential-less caller's own
    trusting = callers.Tenants("x-tenant", requires_key=False)
    assert trusting.of(keyless) == trusting.of(keyed) == tenants.of(keyed)


def test_a_blank_tenant_header_is_no_tenant_and_falls_back_to_the_credentials() -> None:
    tenants = callers.Tenants("x-tenant")
    blank_a = tenants.of(request((b"x-tenant", b"  "), (b"authorization", b"Bearer sk-a")))
    blank_b = tenants.of(request((b"x-tenant", b""), (b"authorization", b"Bearer sk-b")))
    assert blank_a != blank_b
    assert blank_a == tenants.of(request((b"authorization", b"Bearer sk-a")))
