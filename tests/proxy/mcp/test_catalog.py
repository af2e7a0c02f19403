"""The merged catalog: qualified names that route back, the tool-name rule, TTLs and scopes."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.proxy.mcp import catalog


def test_tools_and_prompts_are_qualified_and_resources_keep_their_uris() -> None:
    tools, dropped = catalog.merge(
        catalog.TOOLS, [("github", [{"name": "search"}]), ("time", [{"name": "now"}])]
    )
    assert [t["name"] for t in tools] == ["github.search", "time.now"]
    assert dropped == 0
    resources, _ = catalog.merge(catalog.RESOURCES, [("docs", [{"uri": "file:///a", "name": "a"}])])
    assert resources == [{"uri": "file:///a", "name": "a"}]


def test_two_servers_with_one_tool_name_never_collide_and_each_routes_home() -> None:
    tools, _ = catalog.merge(catalog.TOOLS, [("a", [{"name": "x.y"}]), ("b", [{"name": "x.y"}])])
    names = [t["name"] for t in tools]
    assert len(set(names)) == 2
    assert [catalog.split(n) for n in names] == [("a", "x.y"), ("b", "x.y")]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("has space", id="space"),
        pytest.param("x" * 128, id="too-long-once-qualified"),
        pytest.param("", id="empty"),
        pytest.param("émoji", id="non-ascii"),
    ],
)
def test_a_name_that_cannot_be_qualified_validly_is_left_out_and_counted(name: str) -> None:
    tools, dropped = catalog.merge(catalog.TOOLS, [("s", [{"name": name}, {"name": "ok"}])])
    assert [t["name"] for t in tools] == ["s.ok"]
    assert dropped == 1


@pytest.mark.parametrize(
    ("qualified", "expected"),
    [
        pytest.param("s.tool", ("s", "tool"), id="plain"),
        pytest.param("s.a.b", ("s", "a.b"), id="dots-in-the-tool"),
        pytest.param("tool", None, id="no-server"),
        pytest.param(".tool", None, id="empty-server"),
        pytest.param("s.", None, id="empty-tool"),
    ],
)
def test_split(qualified: str, expected: tuple[str, str] | None) -> None:
    assert catalog.split(qualified) == expected


def test_a_uri_routes_to_the_first_server_that_lists_it() -> None:
    lists = {"a": [{"uri": "x://1"}], "b": [{"uri": "x://1"}, {"uri": "x://2"}]}
    assert catalog.owner_of_uri("x://1", lists) == "a"
    assert catalog.owner_of_uri("x://2", lists) == "b"
    assert catalog.owner_of_uri("x://3", lists) is None


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param({}, 300, id="no-hint"),
        pytest.param({"ttlMs": 0}, 300, id="zero-is-no-hint"),
        pytest.param({"ttlMs": 5000}, 5, id="shorter"),
        pytest.param({"ttlMs": 3_600_000}, 300, id="never-longer"),
        pytest.param({"ttlMs": "60000"}, 300, id="not-an-integer"),
        pytest.param({"ttlMs": True}, 300, id="a-bool-is-no-integer"),
    ],
)
def test_freshness_is_the_policy_ttl_shortened_by_ttl_ms(
    result: dict[str, Any], expected: float
) -> None:
    assert catalog.freshness(300, result) == expected


def test_only_a_list_marked_private_is_private() -> None:
    assert catalog.is_private({"cacheScope": "private"})
    assert not catalog.is_private({"cacheScope": "public"})
    assert not catalog.is_private({})


@pytest.mark.parametrize(
    "page",
    [
        pytest.param([], id="not-an-object"),
        pytest.param({"tools": {}}, id="not-a-list"),
        pytest.param({"tools": ["x"]}, id="items-not-objects"),
        pytest.param({"tools": [{"name": str(i)} for i in range(11)]}, id="over-the-limit"),
    ],
)
def test_a_page_of_the_wrong_shape_or_size_is_refused(page: Any) -> None:
    with pytest.raises(ValueError, match="tools/list"):
        catalog.items_of(catalog.TOOLS, page, limit=10)
