"""The key layout and the selections of keys an invalidation deletes, in memory and in Redis."""

from __future__ import annotations

import fnmatch

import pytest

from sluice.proxy.cache import keyspace

PREFIX = "sluice:"


def redis_glob(pattern: str, key: str) -> bool:
    # Redis globs escape with a backslash; fnmatch has no escapes but brackets, enough here.
    translated = pattern.replace("\\*", "[*]").replace("\\?", "[?]")
    return fnmatch.fnmatchcase(key, translated)


KEYS = {
    (kind, tenant, model): keyspace.layout(PREFIX, kind, tenant, model, "0" * 32)
    for kind in ("chat", "embeddings")
    for tenant in ("alice", "bob")
    for model in ("gpt-4o", "gpt-4o-mini")
}


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param(keyspace.Selection(), id="all"),
        pytest.param(keyspace.Selection(model="gpt-4o"), id="model"),
        pytest.param(keyspace.Selection(tenants=("alice",)), id="tenant"),
        pytest.param(keyspace.Selection(tenants=("alice", "bob")), id="two-tenants"),
        pytest.param(keyspace.Selection(tenants=("bob",), model="gpt-4o-mini"), id="tenant-model"),
        pytest.param(keyspace.Selection(kinds=("embeddings",)), id="kind"),
        pytest.param(
            keyspace.Selection(kinds=("chat", "embeddings"), tenants=("bob",), model="gpt-4o"),
            id="kinds-tenant-model",
        ),
    ],
)
def test_selections_pick_the_same_keys_in_memory_and_as_redis_patterns(
    scope: keyspace.Selection,
) -> None:
    wanted = {
        name
        for name in KEYS
        if (not scope.kinds or name[0] in scope.kinds)
        and (not scope.tenants or name[1] in scope.tenants)
        and (scope.model is None or name[2] == scope.model)
    }
    in_memory = {name for name, k in KEYS.items() if scope.matches(PREFIX, k)}
    by_pattern = {
        name for name, k in KEYS.items() if any(redis_glob(p, k) for p in scope.patterns(PREFIX))
    }
    assert in_memory == wanted
    assert by_pattern == wanted


def test_selection_patterns_escape_glob_characters_in_the_prefix() -> None:
    prefix = "team[1]*:"
    pattern = keyspace.Selection().patterns(prefix)[0]
    assert pattern.startswith("team\\[1\\]\\*:")
    assert not keyspace.Selection().matches(prefix, "team1x:chat:t0:m0:0")
