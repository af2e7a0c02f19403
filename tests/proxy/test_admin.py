"""The admin API's ASGI app: token, request validation, scopes handed to the cache."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluice.api import Admin, CacheConfig, ConfigError
from sluice.proxy import admin
from sluice.proxy.cache import keyspace, memory
from sluice.proxy.http import callers

PREFIX = "sluice:"
TOKEN = "s3cret"


async def call(
    app: admin.AdminApp,
    body: Any,
    *,
    token: str | None = TOKEN,
    path: str = admin.INVALIDATE,
    method: str = "POST",
) -> tuple[int, dict[str, Any]]:
    headers = [(b"authorization", b"Bearer " + token.encode())] if token else []
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": headers,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


def filled(tenant_header: str | None = None) -> tuple[admin.AdminApp, memory.MemoryCache]:
    config = CacheConfig(tenant_header=tenant_header)
    cache = memory.MemoryCache(100, 100_000, PREFIX)
    for tenant in (
        callers.digest("Bearer sk-alice"),
        callers.digest("sk-bob"),
        "h:" + callers.digest("acme"),
    ):
        for model in ("gpt-4o", "gpt-4o-mini"):
            key = keyspace.layout(PREFIX, "chat", tenant, model, "0" * 32)
            cache.store.put(key, b"v", 100, 0)
    return admin.AdminApp(cache, config, token=TOKEN), cache


@pytest.mark.parametrize(
    ("body", "deleted"),
    [
        pytest.param({"scope": "all"}, 6, id="all"),
        pytest.param({"scope": "model", "model": "gpt-4o"}, 3, id="model"),
        pytest.param({"scope": "tenant", "tenant": "sk-alice"}, 2, id="bearer-key"),
        pytest.param({"scope": "tenant", "tenant": "sk-bob"}, 2, id="api-key-header"),
        pytest.param({"scope": "tenant", "tenant": "sk-alice", "model": "gpt-4o"}, 1, id="both"),
        pytest.param({"scope": "tenant", "tenant": "nobody"}, 0, id="unknown-tenant"),
    ],
)
async def test_invalidation_deletes_by_scope_and_counts(body: dict[str, Any], deleted: int) -> None:
    app, cache = filled()
    assert await call(app, body) == (200, {"deleted": deleted})
    assert len(cache.store) == 6 - deleted


async def test_with_a_tenant_header_the_tenant_is_the_headers_value() -> None:
    app, _ = filled(tenant_header="x-tenant")
    assert await call(app, {"scope": "tenant", "tenant": "acme"}) == (200, {"deleted": 2})


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"scope": "model"},
        {"scope": "tenant"},
        {"scope": "everything"},
        {"scope": "model", "model": 3},
    ],
)
async def test_a_body_naming_no_valid_scope_is_a_400(body: dict[str, Any]) -> None:
    app, _ = filled()
    status, answer = await call(app, body)
    assert status == 400
    assert answer["error"]["param"] == "scope"


async def test_a_configured_token_is_required() -> None:
    app, _ = filled()
    assert (await call(app, {"scope": "all"}, token=None))[0] == 401
    assert (await call(app, {"scope": "all"}, token="wrong"))[0] == 401
    assert await call(app, {"scope": "all"}) == (200, {"deleted": 6})


async def test_without_a_configured_token_every_call_is_refused() -> None:
    app, cache = filled()
    app.token = None
    status, answer = await call(app, {"scope": "all"}, token=None)
    assert status == 403
    assert answer["error"]["code"] == "admin_token_unset"
    assert (await call(app, {"scope": "all"}, token="anything"))[0] == 403
    assert len(cache.store) == 6


@pytest.mark.parametrize(
    ("configured", "environ", "bound"),
    [
        pytest.param(None, {}, "127.0.0.1", id="outside-kubernetes-loopback"),
        pytest.param(None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "0.0.0.0", id="in-a-pod"),
        pytest.param("0.0.0.0", {}, "0.0.0.0", id="told-otherwise"),
        pytest.param(
            "127.0.0.1", {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "127.0.0.1", id="pinned"
        ),
    ],
)
def test_the_admin_api_binds_loopback_outside_kubernetes_unless_told_otherwise(
    configured: str | None, environ: dict[str, str], bound: str
) -> None:
    assert admin.host(Admin(host=configured), "0.0.0.0", environ) == bound


async def test_other_paths_and_methods_are_refused() -> None:
    app, _ = filled()
    assert (await call(app, {}, path="/admin/other"))[0] == 404
    assert (await call(app, {}, method="GET"))[0] == 405


def test_a_named_but_unset_token_variable_is_a_config_error() -> None:
    assert admin.token(Admin(), {}) is None
    assert admin.token(Admin(token_env="TOKEN"), {"TOKEN": "t"}) == "t"
    with pytest.raises(ConfigError, match="TOKEN"):
        admin.token(Admin(token_env="TOKEN"), {})
