"""Reading proxies' `/metrics` pages into a policy's status, and choosing the pods to read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from sluice.api import policies
from sluice.operator import podmetrics

LLM_CACHES = policies.KINDS["LLMBatchPolicy"].caches
MCP_CACHES = policies.KINDS["ToolCachePolicy"].caches

PAGE = """\
# HELP sluice_cache_requests_total Cache look-ups, by kind of data and result.
# TYPE sluice_cache_requests_total counter
sluice_cache_requests_total{cache="chat",result="hit"} 3.0
sluice_cache_requests_total{cache="chat",result="miss"} 1.0
sluice_cache_requests_total{cache="chat",result="bypass"} 50.0
sluice_cache_requests_total{cache="embeddings",result="hit"} 4.0
sluice_cache_requests_total{cache="embeddings",result="miss"} 4.0
# HELP sluice_http_requests_total HTTP requests answered.
# TYPE sluice_http_requests_total counter
sluice_http_requests_total{route="chat",method="POST",status="200"} 99.0
"""


def mcp_page(
    up: dict[str, float], tools: dict[str, float], hits: float = 0, misses: float = 0
) -> str:
    """A gateway's page as prometheus_client writes it: gauges by server, look-ups by cache."""
    lines = [
        "# HELP sluice_mcp_upstream_up 1 while it answers.",
        "# TYPE sluice_mcp_upstream_up gauge",
    ]
    lines += [f'sluice_mcp_upstream_up{{server="{s}"}} {v}' for s, v in up.items()]
    lines += ["# HELP sluice_mcp_tools Tools listed.", "# TYPE sluice_mcp_tools gauge"]
    lines += [f'sluice_mcp_tools{{server="{s}"}} {v}' for s, v in tools.items()]
    lines += ["# TYPE sluice_cache_requests_total counter"]
    lines += [f'sluice_cache_requests_total{{cache="tools_list",result="hit"}} {hits}']
    lines += [f'sluice_cache_requests_total{{cache="tool_results",result="miss"}} {misses}']
    return "\n".join(lines) + "\n"  # fmt: skip


def test_parse_counts_hits_over_lookups_leaving_out_bypasses() -> None:
    page = podmetrics.parse(PAGE, LLM_CACHES)
    assert (page.hits, page.lookups) == (7.0, 12.0)
    assert (page.up, page.tools) == ({}, {})


def test_parse_counts_only_the_caches_of_the_policys_kind() -> None:
    mixed = PAGE + mcp_page({}, {}, hits=5, misses=5)
    assert (
        podmetrics.parse(mixed, MCP_CACHES).hits,
        podmetrics.parse(mixed, MCP_CACHES).lookups,
    ) == (5.0, 10.0)
    assert podmetrics.parse(mixed, LLM_CACHES).lookups == 12.0


def test_parse_reads_each_servers_state_and_tool_count() -> None:
    page = podmetrics.parse(mcp_page({"a": 1, "b": 0}, {"a": 12, "b": 3}), MCP_CACHES)
    assert page.up == {"a": True, "b": False}
    assert page.tools == {"a": 12, "b": 3}


def test_parse_refuses_a_page_that_is_no_exposition() -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        podmetrics.parse("<html>502 Bad Gateway</html>\n", MCP_CACHES)


def page(up: dict[str, bool] | None = None, tools: dict[str, int] | None = None,
         hits: float = 0, lookups: float = 0) -> podmetrics.Page:  # fmt: skip
    return podmetrics.Page(hits, lookups, up or {}, tools or {})


@pytest.mark.parametrize(
    ("pages", "expected"),
    [
        pytest.param([page(hits=7, lookups=12)], {"hitRatio": 0.583}, id="one-pod"),
        pytest.param([page(hits=7, lookups=12)] * 2, {"hitRatio": 0.583}, id="two-pods"),
        pytest.param(
            [page(hits=7, lookups=12), page(lookups=2)], {"hitRatio": 0.5}, id="summed-over-pods"
        ),
        pytest.param([page()], {}, id="no-lookups-yet"),
        pytest.param([], {}, id="no-pods"),
    ],
)
def test_the_hit_ratio_is_summed_over_pods_and_unknown_before_any_lookup(
    pages: list[podmetrics.Page], expected: dict[str, Any]
) -> None:
    assert podmetrics.combine(pages, None) == expected


UP_AB = {"a": True, "b": True}


@pytest.mark.parametrize(
    ("pages", "servers", "expected"),
    [
        pytest.param(
            [page(UP_AB, {"a": 3, "b": 4}), page(UP_AB, {"a": 3, "b": 4})],
            ("a", "b", "c"), ("2/3", 7), id="all-pods-agree-c-never-contacted",
        ),
        pytest.param(
            [page(UP_AB, {"a": 3, "b": 4}), page({"a": True, "b": False}, {"a": 3, "b": 4})],
            ("a", "b"), ("1/2", 7), id="one-pod-sees-b-down-so-b-is-down-but-its-tools-stay",
        ),
        pytest.param(
            [page(UP_AB, {"a": 3, "b": 4}), page({}, {})],
            ("a", "b"), ("2/2", 7), id="a-pod-that-has-contacted-nothing-yet-hides-nothing",
        ),
        pytest.param(
            [page(UP_AB, {"a": 3, "b": 4}), page(UP_AB, {"a": 5, "b": 4})],
            ("a", "b"), ("2/2", 9), id="pods-disagree-on-a-list-the-longest-counts",
        ),
        pytest.param(
            [page({"a": True, "old": True}, {"a": 3, "old": 40})],
            ("a", "b"), ("1/2", 3), id="a-server-no-longer-named-does-not-count",
        ),
        pytest.param([page()], ("a",), ("0/1", 0), id="read-but-nothing-contacted"),
    ],
)  # fmt: skip
def test_servers_are_up_only_where_no_pod_finds_them_down_and_tools_take_the_longest_list(
    pages: list[podmetrics.Page], servers: tuple[str, ...], expected: tuple[str, int]
) -> None:
    fields = podmetrics.combine(pages, servers)
    assert (fields["servers"], fields["tools"]) == expected
    assert set(fields) == {"servers", "tools"}  # no look-ups in these pages: no hit ratio


def test_without_readable_pods_a_tool_policy_keeps_its_status() -> None:
    assert podmetrics.combine([], ("a",)) == {}


def test_the_written_fields_are_valid_status_of_their_kind() -> None:
    fields = podmetrics.combine([page(UP_AB, {"a": 1}, hits=1, lookups=2)], ("a", "b"))
    status = policies.ToolCachePolicyStatus.model_validate(fields)
    assert status.model_dump(by_alias=True, exclude_defaults=True) == fields


def pod(ip: str | None, ready: bool, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"p-{ip}"}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    return {"metadata": meta, "status": {"podIP": ip, "conditions": [condition]}}


def test_only_ready_pods_with_an_ip_that_are_not_going_away_are_scraped() -> None:
    pods = [
        pod("10.0.0.1", True),
        pod("10.0.0.2", False),
        pod(None, True),
        pod("10.0.0.3", True, deleting=True),
    ]
    assert podmetrics.pod_urls(pods) == ["http://10.0.0.1:8080/metrics"]


class Streamed:
    """A reply's body as the chunks it arrives in (`aiohttp.ClientResponse.content`)."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self.content = self
        self.chunks = chunks
        self.read = 0

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk


async def test_a_page_is_read_whole_up_to_a_bound_and_refused_past_it() -> None:
    whole = PAGE.encode()
    assert await podmetrics.bounded_text(Streamed([whole[:9], whole[9:]])) == PAGE  # type: ignore[arg-type]

    chunk = b"#" * (1024 * 1024)
    endless = Streamed([chunk] * 1000)  # a pod that sends a gigabyte
    with pytest.raises(ValueError, match="over"):
        await podmetrics.bounded_text(endless)  # type: ignore[arg-type]
    assert endless.read == podmetrics.MAX_PAGE_BYTES // len(chunk) + 1  # stopped there


class FakeClient:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.selectors: list[str] = []

    async def list(self, url_path: str, label_selector: str) -> list[dict[str, Any]]:
        self.selectors.append(label_selector)
        return [pod("10.0.0.1", True)]

    async def patch_status(self, url_path: str, status: dict[str, Any]) -> None:
        self.patches.append((url_path, status))


@pytest.mark.parametrize(
    ("shown", "scraped", "written"),
    [
        pytest.param({}, [page(hits=1, lookups=4)], {"hitRatio": 0.25}, id="first-reading"),
        pytest.param({"hitRatio": 0.25}, [page(hits=1, lookups=2)], {"hitRatio": 0.5},
                     id="changed"),
        pytest.param({"hitRatio": 0.5}, [page(hits=1, lookups=2)], None, id="unchanged-no-write"),
        pytest.param({"hitRatio": 0.5}, [], None, id="unreadable-keeps-the-last"),
    ],
)  # fmt: skip
async def test_refresh_writes_the_ratio_only_when_it_changed(
    monkeypatch: pytest.MonkeyPatch,
    shown: dict[str, Any],
    scraped: list[podmetrics.Page],
    written: dict[str, Any] | None,
) -> None:
    async def fake_scrape(session: Any, urls: list[str], caches: Any) -> list[podmetrics.Page]:
        assert urls == ["http://10.0.0.1:8080/metrics"]
        assert caches == LLM_CACHES
        return scraped

    monkeypatch.setattr(podmetrics, "scrape", fake_scrape)
    client = FakeClient()
    key = ("LLMBatchPolicy", "team-a", "openai")

    await podmetrics.refresh(client, None, key, podmetrics.Known(shown))  # type: ignore[arg-type]

    assert client.selectors == [
        "app.kubernetes.io/name=sluice-proxy,app.kubernetes.io/instance=openai-llm"
    ]
    path = "/apis/sluice.dev/v1alpha1/namespaces/team-a/llmbatchpolicies/openai"
    assert client.patches == ([] if written is None else [(path, written)])


async def test_refresh_of_a_tool_policy_writes_only_the_fields_that_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fake_scrape(session: Any, urls: list[str], caches: Any) -> list[podmetrics.Page]:
        assert caches == MCP_CACHES
        return [page({"a": True, "b": False}, {"a": 2, "b": 5}, hits=1, lookups=2)]

    monkeypatch.setattr(podmetrics, "scrape", fake_scrape)
    client = FakeClient()
    known = podmetrics.Known({"hitRatio": 0.5, "servers": "2/2", "tools": 7}, ("a", "b"))

    await podmetrics.refresh(client, None, ("ToolCachePolicy", "n", "t"), known)  # type: ignore[arg-type]

    path = "/apis/sluice.dev/v1alpha1/namespaces/n/toolcachepolicies/t"
    assert client.patches == [(path, {"servers": "1/2"})]


def test_index_entry_keys_a_policy_by_kind_namespace_and_name_with_its_servers() -> None:
    body = {
        "kind": "ToolCachePolicy",
        "metadata": {"namespace": "n", "name": "t"},
        "spec": {
            "servers": [{"name": "a", "url": "http://a/mcp"}, {"name": "b", "url": "http://b/mcp"}]
        },
        "status": {"hitRatio": 0.9, "servers": "1/2", "endpoint": "http://t-mcp.n.svc:8080/mcp"},
    }
    shown = {"hitRatio": 0.9, "callsSavedPerHour": None, "servers": "1/2", "tools": None}
    assert podmetrics.index_entry(body) == {
        ("ToolCachePolicy", "n", "t"): podmetrics.Known(shown, ("a", "b"))
    }
    nothing = {"hitRatio": None, "callsSavedPerHour": None, "servers": None, "tools": None}
    assert podmetrics.index_entry({**body, "status": None}) == {
        ("ToolCachePolicy", "n", "t"): podmetrics.Known(nothing, ("a", "b"))
    }


def test_index_entry_of_a_kind_without_servers_has_none() -> None:
    body = {"kind": "LLMBatchPolicy", "metadata": {"namespace": "n", "name": "o"}, "spec": {}}
    assert podmetrics.index_entry(body)[("LLMBatchPolicy", "n", "o")].servers is None


SAVING_PAGE = """\
# TYPE sluice_upstream_calls_saved_total counter
sluice_upstream_calls_saved_total{endpoint="embeddings",reason="batched"} 30.0
sluice_upstream_calls_saved_total{endpoint="chat_completions",reason="cached"} 20.0
sluice_upstream_calls_saved_total{endpoint="chat_completions",reason="shared"} 0.0
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1000.0
"""


def test_parse_reads_the_calls_saved_by_every_reason_and_the_start_time() -> None:
    page = podmetrics.parse(SAVING_PAGE, LLM_CACHES)
    assert (page.saved, page.started) == (50.0, 1000.0)
    assert podmetrics.parse(mcp_page({"a": 1}, {"a": 2}), MCP_CACHES).saved is None


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(1000.0 + 1800, 200, id="two-pods-half-an-hour-each"),
        pytest.param(1000.0 + 5, 6000, id="a-young-pod-counts-as-a-minute-old"),
    ],
)
def test_calls_saved_per_hour_is_each_pods_rate_since_its_start_summed(
    now: float, expected: int
) -> None:
    pages = [podmetrics.parse(SAVING_PAGE, LLM_CACHES)] * 2
    assert podmetrics.combine(pages, None, now)["callsSavedPerHour"] == expected


def test_calls_saved_per_hour_is_left_out_without_the_series_or_the_time() -> None:
    mcp = podmetrics.parse(mcp_page({"a": 1}, {"a": 2}), MCP_CACHES)
    assert "callsSavedPerHour" not in podmetrics.combine([mcp], ("a",), 2000.0)
    saving = podmetrics.parse(SAVING_PAGE, LLM_CACHES)
    assert "callsSavedPerHour" not in podmetrics.combine([saving], None)
