"""The reconcile loop against an in-memory API: what is applied, skipped, deleted, reported."""

from __future__ import annotations

import base64
import copy
import datetime
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from sluice import api as api_module
from sluice.operator import kube, proxyconfig, reconcile, resources, tracking
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
        self.refusal = kube.ApiError(403, "Forbidden", "cannot patch")

    def add(self, obj: dict[str, Any]) -> None:
        self.objects[kube.path_of(obj)] = obj

    async def get(self, url_path: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get(url_path))

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] in self.refuse:
            raise self.refusal
        stored = copy.deepcopy(dict(obj))
        stored["metadata"]["uid"] = f"uid-{obj['kind']}"
        self.objects[kube.path_of(obj)] = stored
        self.applied.append(obj["kind"])
        return copy.deepcopy(stored)

    async def create(self, obj: Mapping[str, Any]) -> bool:
        if kube.path_of(obj) in self.objects:
            return False
        made = copy.deepcopy(dict(obj))
        if "stringData" in made:  # as the API server stores a Secret
            encoded = base64.b64encode
            made["data"] = {
                k: encoded(v.encode()).decode() for k, v in made.pop("stringData").items()
            }
        await self.apply(made)
        return True

    async def list(self, url_path: str, label_selector: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for p, o in self.objects.items() if p.startswith(url_path + "/")]

    async def delete(self, url_path: str, uid: str) -> None:
        assert self.objects[url_path]["metadata"]["uid"] == uid
        del self.objects[url_path]

    async def patch_status(self, url_path: str, new: Mapping[str, Any]) -> None:
        self.status_patches.append(dict(new))
        path = url_path.removesuffix("/status")
        if path in self.objects:
            self.objects[path]["status"] = {**self.objects[path].get("status", {}), **new}

    async def served(self, group_version: str, plural: str) -> bool:
        return self.monitors


def secret(name: str, *keys: str) -> dict[str, Any]:
    data = dict.fromkeys(keys, "c2VjcmV0")
    meta = {"name": name, "namespace": factories.NAMESPACE}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": data}


Warned = list[tuple[str, str]]


def reconciler(api: FakeApi, warned: Warned | None = None) -> reconcile.Reconciler:
    def warn(body: Mapping[str, Any], reason: str, message: str) -> None:
        if warned is not None:
            warned.append((reason, message))

    return reconcile.Reconciler(api, "img:1", warn=warn, clock=lambda: NOW)  # type: ignore[arg-type]


def ready(patch: dict[str, Any]) -> tuple[str, str]:
    condition = next(c for c in patch["conditions"] if c["type"] == "Ready")
    return condition["status"], condition["reason"]


def degraded(patch: dict[str, Any]) -> tuple[str, str]:
    condition = next(c for c in patch["conditions"] if c["type"] == "Degraded")
    return condition["status"], condition["reason"]


def stored(api: FakeApi, body: dict[str, Any]) -> dict[str, Any]:
    """The policy as the API holds it (the reconciler reads it afresh on retries)."""
    api.add(body)
    return body


def rotate(api: FakeApi, name: str, key: str) -> None:
    """Give one key of a stored Secret a new value."""
    api.objects[kube.path("v1", "Secret", factories.NAMESPACE, name)]["data"][key] = "bmV3"


def secrets_checksum(api: FakeApi) -> str:
    """The Secrets checksum on the pod template of the `openai` LLMBatchPolicy's Deployment."""
    key = ("LLMBatchPolicy", factories.NAMESPACE, "openai")
    template = api.objects[reconcile.Reconciler.deployment_path(key)]["spec"]["template"]
    return str(template["metadata"]["annotations"][resources.SECRETS_ANNOTATION])


KINDS_APPLIED = ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]


async def test_a_policy_is_applied_in_order_and_its_status_written() -> None:
    api = FakeApi()
    api.add(secret("openai", "api-key"))
    body = factories.llm_body(upstream={"apiKeySecretRef": KEY_REF})

    assert await reconciler(api).reconcile(body, trigger="policy") == "applied"

    assert api.applied == ["Secret", *KINDS_APPLIED]  # the admin token's, made once
    assert api.status_patches[-1]["observedGeneration"] == 1
    assert api.status_patches[-1]["endpoint"] == "http://openai-llm.team-a.svc:8080/v1"


@pytest.mark.parametrize(
    ("secrets", "reason"),
    [
        pytest.param([], "SecretNotFound", id="no-secret"),
        pytest.param([secret("openai", "other")], "SecretKeyNotFound", id="no-key"),
    ],
)
async def test_a_missing_secret_blocks_the_rollout_and_says_why_once(
    secrets: list[dict[str, Any]], reason: str
) -> None:
    api = FakeApi()
    for obj in secrets:
        api.add(obj)
    body = stored(api, factories.llm_body(upstream={"apiKeySecretRef": KEY_REF}))
    warned: Warned = []
    subject = reconciler(api, warned)

    assert await subject.reconcile(body, trigger="policy") == "blocked"
    assert await subject.reconcile(body, trigger="retry") == "blocked"

    assert [w[0] for w in warned] == [reason]  # one Event, however often it is retried
    assert [k for k in api.applied if k != "Secret"] == []
    assert ready(api.status_patches[-1]) == ("False", reason)
    tracked = subject.tracked[("LLMBatchPolicy", factories.NAMESPACE, "openai")]
    assert tracked.failures == 2
    assert tracked.retry is not None
    tracked.cancel_retry()


def test_retries_back_off_to_a_cap() -> None:
    delays = [tracking.retry_delay(n) for n in range(1, 12)]
    assert delays[:4] == [2.0, 4.0, 8.0, 16.0]
    assert delays == sorted(delays)
    assert max(delays) == tracking.RETRY_CAP_SECONDS == delays[-1]
    assert tracking.retry_delay(10_000) == tracking.RETRY_CAP_SECONDS


async def test_a_secret_that_appears_or_rotates_is_noticed_by_the_recheck() -> None:
    api = FakeApi()
    body = stored(api, factories.llm_body(upstream={"apiKeySecretRef": KEY_REF}))
    subject = reconciler(api)
    await subject.reconcile(body, trigger="policy")
    api.add(secret("openai", "api-key"))

    await subject.recheck_secrets()
    first = secrets_checksum(api)
    rotate(api, "openai", "api-key")
    await subject.recheck_secrets()

    second = secrets_checksum(api)
    assert first != second


async def test_a_spec_that_cannot_be_rendered_is_not_rechecked_for_its_old_secrets() -> None:
    api = FakeApi()
    api.add(secret("openai", "api-key"))
    subject = reconciler(api)
    await subject.reconcile(
        stored(api, factories.llm_body(upstream={"apiKeySecretRef": KEY_REF})), "policy"
    )
    unreadable = factories.llm_body(
        generation=2, upstream={"apiKeySecretRef": KEY_REF}, batching={"fromTheFuture": True}
    )
    assert await subject.reconcile(stored(api, unreadable), trigger="policy") == "blocked"
    rotate(api, "openai", "api-key")
    rechecked: list[str] = []

    async def reconcile_latest(key: reconcile.Key, trigger: str) -> None:
        rechecked.append(trigger)

    subject.reconcile_latest = reconcile_latest  # type: ignore[method-assign]
    await subject.recheck_secrets()

    assert rechecked == []  # only a new spec can help: no reconcile every interval meanwhile


async def test_an_older_generation_never_overwrites_a_newer_one() -> None:
    api = FakeApi()
    subject = reconciler(api)
    await subject.reconcile(factories.llm_body(generation=5), trigger="child")
    api.applied.clear()

    assert (
        await subject.reconcile(factories.llm_body(generation=4), trigger="policy") == "superseded"
    )
    assert api.applied == []


async def test_a_policy_made_again_under_the_same_name_starts_afresh() -> None:
    api = FakeApi()
    subject = reconciler(api)
    await subject.reconcile(factories.llm_body(generation=5), trigger="policy")
    again = factories.llm_body(generation=1)
    again["metadata"]["uid"] = "uid-of-the-new-object"
    for obj in api.objects.values():  # the garbage collector took the old children
        obj["metadata"]["ownerReferences"] = [{"uid": "uid-of-the-new-object", "controller": True}]

    assert await subject.reconcile(again, trigger="policy") == "applied"


async def test_a_policy_being_deleted_is_left_to_the_garbage_collector_and_forgotten() -> None:
    api = FakeApi()
    subject = reconciler(api)
    await subject.reconcile(factories.llm_body(), trigger="policy")
    body = factories.llm_body()
    body["metadata"]["deletionTimestamp"] = "2025-03-01T00:00:00Z"
    api.applied.clear()

    assert await subject.reconcile(body, trigger="child") == "deleting"
    assert api.applied == []
    subject.forget(body)
    assert subject.tracked == {}


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


async def test_an_object_of_a_childs_name_that_the_policy_does_not_own_is_left_alone() -> None:
    api = FakeApi()
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "openai-llm", "namespace": factories.NAMESPACE, "uid": "theirs"},
        "spec": {"ports": [{"port": 80}]},
    }
    api.add(copy.deepcopy(foreign))
    warned: Warned = []
    subject = reconciler(api, warned)
    body = stored(api, factories.llm_body())

    assert await subject.reconcile(body, trigger="policy") == "blocked"

    assert api.objects[kube.path_of(foreign)] == foreign
    assert [k for k in api.applied if k != "Secret"] == []  # nothing half-made
    (event,) = warned
    assert event[0] == "Conflict"
    assert f"Service {factories.NAMESPACE}/openai-llm" in event[1]
    assert ready(api.status_patches[-1]) == ("False", "Conflict")
    subject.tracked[("LLMBatchPolicy", factories.NAMESPACE, "openai")].cancel_retry()


async def test_a_spec_this_operator_cannot_read_is_a_permanent_problem() -> None:
    api = FakeApi()
    body = factories.llm_body(batching={"maxBatchSize": 8, "fromTheFuture": True})
    subject = reconciler(api)

    assert await subject.reconcile(body, trigger="policy") == "blocked"

    tracked = subject.tracked[("LLMBatchPolicy", factories.NAMESPACE, "openai")]
    assert tracked.problem is not None
    assert tracked.problem.reason == "InvalidSpec"
    assert "fromTheFuture" in tracked.problem.message
    assert tracked.retry is None  # retrying cannot help
    assert api.applied == []


async def test_a_refused_deployment_keeps_the_old_pods_and_config_and_a_revert_converges() -> None:
    api = FakeApi()
    warned: Warned = []
    subject = reconciler(api, warned)
    key = ("LLMBatchPolicy", factories.NAMESPACE, "openai")
    await subject.reconcile(stored(api, factories.llm_body(generation=1)), trigger="policy")
    path = subject.deployment_path(key)
    api.objects[path]["status"] = {"conditions": [{"type": "Available", "status": "True"}]}
    old_config = resources.mounted_config(api.objects[path])

    api.refuse.add("Deployment")
    api.refusal = kube.ApiError(422, "Invalid", "spec.template...: must be less than or equal")
    rejected = factories.llm_body(generation=2, batching={"maxBatchSize": 9})
    assert await subject.reconcile(stored(api, rejected), trigger="policy") == "blocked"
    assert resources.mounted_config(api.objects[path]) == old_config
    assert kube.path("v1", "ConfigMap", factories.NAMESPACE, old_config or "") in api.objects
    assert ready(api.status_patches[-1]) == ("True", "Available")  # the old pods still serve
    assert degraded(api.status_patches[-1]) == ("True", "SpecRejected")
    assert [w[0] for w in warned] == ["SpecRejected"]

    api.refuse.clear()
    reverted = stored(api, factories.llm_body(generation=3))
    await subject.observe(reverted)

    assert api.status_patches[-1]["observedGeneration"] == 3
    assert degraded(api.status_patches[-1]) == ("False", "AsExpected")
    assert resources.mounted_config(api.objects[path]) == old_config
    assert subject.tracked[key].retry is None


async def test_child_events_reconcile_only_when_the_child_drifted() -> None:
    api = FakeApi()
    subject = reconciler(api)
    key = ("LLMBatchPolicy", factories.NAMESPACE, "openai")
    await subject.reconcile(stored(api, factories.llm_body()), trigger="policy")
    path = subject.deployment_path(key)
    api.applied.clear()

    status_only = copy.deepcopy(api.objects[path])
    status_only["status"] = {
        "readyReplicas": 2,
        "conditions": [{"type": "Available", "status": "True"}],
    }
    await subject.child_changed(status_only, deleted=False)
    assert api.applied == []
    assert ready(api.status_patches[-1]) == ("True", "Available")

    edited = copy.deepcopy(api.objects[path])
    edited["spec"]["replicas"] = 5
    api.objects[path] = edited
    await subject.child_changed(edited, deleted=False)
    assert "Deployment" in api.applied
    assert api.objects[path]["spec"]["replicas"] == 2


async def test_old_config_maps_are_pruned_once_the_rollout_is_complete() -> None:
    api = FakeApi()
    subject = reconciler(api)
    key = ("LLMBatchPolicy", factories.NAMESPACE, "openai")
    await subject.reconcile(stored(api, factories.llm_body(generation=1)), trigger="policy")
    old = resources.mounted_config(api.objects[subject.deployment_path(key)])
    await subject.reconcile(
        stored(api, factories.llm_body(generation=2, batching={"maxBatchSize": 9})), "policy"
    )
    path = subject.deployment_path(key)
    new = resources.mounted_config(api.objects[path])
    configs = kube.path("v1", "ConfigMap", factories.NAMESPACE)
    assert {f"{configs}/{old}", f"{configs}/{new}"} <= set(api.objects)

    rolling = copy.deepcopy(api.objects[path])
    rolling["status"] = {"replicas": 3, "updatedReplicas": 1, "availableReplicas": 2}
    await subject.child_changed(rolling, deleted=False)
    assert f"{configs}/{old}" in api.objects  # old pods still mount it

    done = copy.deepcopy(api.objects[path])
    done["status"] = {
        "replicas": 2,
        "updatedReplicas": 2,
        "availableReplicas": 2,
        "readyReplicas": 2,
    }
    await subject.child_changed(done, deleted=False)
    assert f"{configs}/{old}" not in api.objects
    assert f"{configs}/{new}" in api.objects


async def test_a_render_error_is_a_status_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(policy: Any) -> Any:
        raise api_module.ConfigError("LLMBatchPolicy.spec.listen: the proxy refuses this")

    monkeypatch.setattr(proxyconfig, "render", refuse)
    api = FakeApi()
    subject = reconciler(api)

    assert await subject.reconcile(factories.llm_body(), trigger="policy") == "blocked"

    patch = api.status_patches[-1]
    assert ready(patch) == ("False", "InvalidConfig")
    message = next(c["message"] for c in patch["conditions"] if c["type"] == "Ready")
    assert "the proxy refuses this" in message


async def test_an_api_that_does_not_answer_is_one_problem_not_an_exception() -> None:
    api = FakeApi()

    async def down(url_path: str) -> None:
        raise aiohttp.ClientConnectionError("connection refused")

    api.get = down  # type: ignore[method-assign]
    warned: Warned = []
    subject = reconciler(api, warned)

    assert await subject.reconcile(factories.llm_body(), trigger="policy") == "error"
    assert await subject.reconcile(factories.llm_body(), trigger="retry") == "error"
    assert warned == []  # an Event could not be posted either
    subject.tracked[("LLMBatchPolicy", factories.NAMESPACE, "openai")].cancel_retry()


async def test_tool_cache_policy_header_secret_must_exist() -> None:
    api = FakeApi()
    servers = [{"name": "gh", "url": "http://gh/mcp", "headersSecretRef": {"name": "gh-headers"}}]
    body = factories.tool_body(servers=servers)
    subject = reconciler(api)

    blocked = await subject.reconcile(body, trigger="policy")
    api.add(secret("gh-headers", "Authorization"))
    applied = await subject.reconcile(body, trigger="policy")

    assert (blocked, applied) == ("blocked", "applied")
