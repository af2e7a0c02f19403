"""The reconcile loop against an in-memory API: what is applied, skipped, deleted, reported."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from typing import Any

import pytest

from sluice.operator import kube, reconcile
from tests.operator import factories

NOW = datetime.datetime(2025, 3, 1, tzinfo=datetime.UTC)
KEY_REF = {"name": "openai", "key": "api-key"}


class FakeApi:
    """Objects by REST path; applies replace, status patches merge, deletes check the uid."""

    def __init__(self, monitors: bool = False) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.monitors = monitors
        self.applied: list[str] = []
        self.status_patches: list[dict[str, Any]] = []
        self.refuse: set[str] = set()  # kinds whose apply fails

    def add(self, obj: dict[str, Any]) -> None:
        self.objects[kube.path_of(obj)] = obj

    async def get(self, url_path: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get(url_path))

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] in self.refuse:
            raise kube.ApiError(403, "Forbidden", f"cannot patch {obj['kind']}")
        stored = copy.deepcopy(dict(obj))
        stored["metadata"]["uid"] = f"uid-{obj['kind']}"
        self.objects[kube.path_of(obj)] = stored
        self.applied.append(obj["kind"])
        return copy.deepcopy(stored)

    async def delete(self, url_path: str, uid: str) -> None:
        assert self.objects[url_path]["metadata"]["uid"] == uid
        del self.objects[url_path]

    async def patch_status(self, url_path: str, new: Mapping[str, Any]) -> None:
        self.status_patches.append(dict(new))

    async def served(self, group_version: str, plural: str) -> bool:
        return self.monitors


def secret(name: str, *keys: str) -> dict[str, Any]:
    data = dict.fromkeys(keys, "c2VjcmV0")
    meta = {"name": name, "namespace": factories.NAMESPACE}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": data}


def reconciler(api: FakeApi) -> reconcile.Reconciler:
    return reconcile.Reconciler(api, "img:1", clock=lambda: NOW)  # type: ignore[arg-type]


def ready(patch: dict[str, Any]) -> tuple[str, str]:
    condition = next(c for c in patch["conditions"] if c["type"] == "Ready")
    return condition["status"], condition["reason"]


async def test_a_policy_is_applied_in_order_and_its_status_written() -> None:
    api = FakeApi()
    api.add(secret("openai", "api-key"))
    body = factories.llm_body(upstream={"apiKeySecretRef": KEY_REF})

    outcome = await reconciler(api).reconcile(body, trigger="policy")

    assert outcome == reconcile.Outcome("applied")
    assert api.applied == ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]
    assert api.status_patches[-1]["observedGeneration"] == 1
    assert api.status_patches[-1]["endpoint"] == "http://openai-llm.team-a.svc:8080/v1"


@pytest.mark.parametrize(
    ("secrets", "reason"),
    [
        pytest.param([], "SecretNotFound", id="no-secret"),
        pytest.param([secret("openai", "other")], "SecretKeyNotFound", id="no-key"),
    ],
)
async def test_a_missing_secret_blocks_the_rollout_and_says_why(
    secrets: list[dict[str, Any]], reason: str
) -> None:
    api = FakeApi()
    for obj in secrets:
        api.add(obj)
    body = factories.llm_body(upstream={"apiKeySecretRef": KEY_REF})

    outcome = await reconciler(api).reconcile(body, trigger="policy")

    assert outcome.result == "blocked"
    assert outcome.problem is not None
    assert outcome.problem.reason == reason
    assert outcome.problem.retry
    assert outcome.newly_failing
    assert api.applied == []
    assert ready(api.status_patches[-1]) == ("False", reason)


async def test_a_problem_already_shown_in_the_status_is_not_new() -> None:
    api = FakeApi()
    body = factories.llm_body(upstream={"apiKeySecretRef": KEY_REF})
    first = reconciler(api)
    await first.reconcile(body, trigger="policy")
    body["status"] = api.status_patches[-1]

    outcome = await first.reconcile(body, trigger="policy")

    assert not outcome.newly_failing
    assert len(api.status_patches) == 1  # nothing changed, nothing written


async def test_an_older_generation_never_overwrites_a_newer_one() -> None:
    api = FakeApi()
    subject = reconciler(api)
    await subject.reconcile(factories.llm_body(generation=5), trigger="child")
    api.applied.clear()

    outcome = await subject.reconcile(factories.llm_body(generation=4), trigger="policy")

    assert outcome.result == "superseded"
    assert api.applied == []


async def test_a_policy_made_again_under_the_same_name_starts_afresh() -> None:
    api = FakeApi()
    subject = reconciler(api)
    await subject.reconcile(factories.llm_body(generation=5), trigger="policy")
    again = factories.llm_body(generation=1)
    again["metadata"]["uid"] = "uid-of-the-new-object"

    assert (await subject.reconcile(again, trigger="policy")).result == "applied"


async def test_a_policy_being_deleted_is_left_to_the_garbage_collector() -> None:
    api = FakeApi()
    body = factories.llm_body()
    body["metadata"]["deletionTimestamp"] = "2025-03-01T00:00:00Z"

    assert (await reconciler(api).reconcile(body, trigger="child")).result == "deleting"
    assert api.applied == []
    assert api.status_patches == []


async def test_scaling_to_one_replica_deletes_the_owned_budget_but_never_a_foreign_one() -> None:
    api = FakeApi()
    subject = reconciler(api)
    await subject.reconcile(factories.llm_body(generation=1), trigger="policy")
    budget_path = kube.path("policy/v1", "PodDisruptionBudget", factories.NAMESPACE, "openai-llm")
    assert budget_path in api.objects

    await subject.reconcile(factories.llm_body(generation=2, proxy={"replicas": 1}), "policy")
    assert budget_path not in api.objects

    foreign = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "openai-llm", "namespace": factories.NAMESPACE, "uid": "x"},
    }
    api.add(foreign)
    await subject.reconcile(factories.llm_body(generation=3, proxy={"replicas": 1}), "policy")
    assert api.objects[budget_path] is foreign


async def test_a_spec_this_operator_cannot_read_is_a_permanent_problem() -> None:
    api = FakeApi()
    body = factories.llm_body(batching={"maxBatchSize": 8, "fromTheFuture": True})

    outcome = await reconciler(api).reconcile(body, trigger="policy")

    assert outcome.problem is not None
    assert outcome.problem.reason == "InvalidSpec"
    assert not outcome.problem.retry
    assert "fromTheFuture" in outcome.problem.message
    assert api.applied == []


async def test_a_refused_apply_becomes_a_problem_naming_the_object() -> None:
    api = FakeApi()
    api.refuse.add("Service")

    outcome = await reconciler(api).reconcile(factories.llm_body(), trigger="policy")

    assert outcome.problem is not None
    assert outcome.problem.reason == "ApplyFailed"
    assert "applying the Service" in outcome.problem.message
    assert ready(api.status_patches[-1]) == ("False", "ApplyFailed")


async def test_tool_cache_policy_header_secret_must_exist() -> None:
    api = FakeApi()
    servers = [{"name": "gh", "url": "http://gh/mcp", "headersSecretRef": {"name": "gh-headers"}}]
    body = factories.tool_body(servers=servers)

    blocked = await reconciler(api).reconcile(body, trigger="policy")
    api.add(secret("gh-headers", "Authorization"))
    applied = await reconciler(api).reconcile(body, trigger="policy")

    assert blocked.problem is not None
    assert blocked.problem.reason == "SecretNotFound"
    assert applied.result == "applied"
