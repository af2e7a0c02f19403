"""Reading the hit ratio out of proxies' `/metrics` pages, and choosing the pods to read."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.operator import hitratio

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


def test_counts_hits_over_lookups_leaving_out_bypasses() -> None:
    assert hitratio.counts(PAGE) == (7.0, 12.0)


@pytest.mark.parametrize(
    ("pages", "expected"),
    [
        pytest.param([PAGE], 0.583, id="one-pod"),
        pytest.param([PAGE, PAGE], 0.583, id="two-pods"),
        pytest.param(
            [PAGE, 'sluice_cache_requests_total{cache="chat",result="miss"} 2\n'],
            0.5,
            id="summed-over-pods",
        ),
        pytest.param(["# nothing yet\n"], None, id="no-lookups-yet"),
        pytest.param([], None, id="no-pods"),
    ],
)
def test_ratio_is_summed_over_pods_and_unknown_before_any_lookup(
    pages: list[str], expected: float | None
) -> None:
    assert hitratio.ratio(pages) == expected


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
    assert hitratio.pod_urls(pods) == ["http://10.0.0.1:8080/metrics"]


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
        pytest.param(None, 0.25, 0.25, id="first-reading"),
        pytest.param(0.25, 0.5, 0.5, id="changed"),
        pytest.param(0.5, 0.5, None, id="unchanged-no-write"),
        pytest.param(0.5, None, None, id="unreadable-keeps-the-last"),
    ],
)
async def test_refresh_writes_the_ratio_only_when_it_changed(
    monkeypatch: pytest.MonkeyPatch,
    shown: float | None,
    scraped: float | None,
    written: float | None,
) -> None:
    async def fake_scrape(session: Any, urls: list[str]) -> float | None:
        assert urls == ["http://10.0.0.1:8080/metrics"]
        return scraped

    monkeypatch.setattr(hitratio, "scrape", fake_scrape)
    client = FakeClient()
    key = ("LLMBatchPolicy", "team-a", "openai")

    await hitratio.refresh(client, None, key, shown)  # type: ignore[arg-type]

    assert client.selectors == [
        "app.kubernetes.io/name=sluice-proxy,app.kubernetes.io/instance=openai-llm"
    ]
    expected = (
        []
        if written is None
        else [
            (
                "/apis/sluice.dev/v1alpha1/namespaces/team-a/llmbatchpolicies/openai",
                {"hitRatio": written},
            )
        ]
    )
    assert client.patches == expected


def test_index_entry_keys_a_policy_by_kind_namespace_and_name() -> None:
    body = {
        "kind": "ToolCachePolicy",
        "metadata": {"namespace": "n", "name": "t"},
        "status": {"hitRatio": 0.9},
    }
    assert hitratio.index_entry(body) == {("ToolCachePolicy", "n", "t"): 0.9}
    assert hitratio.index_entry({**body, "status": None}) == {("ToolCachePolicy", "n", "t"): None}
