"""Status from the Deployment: conditions (KEP-1623), endpoint, ready replicas, transitions."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from sluice.operator import status
from tests.operator import factories

NOW = datetime.datetime(2025, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
EARLIER = "2025-03-01T11:00:00Z"


def deployment(
    wanted: int = 2,
    updated: int = 2,
    ready: int = 2,
    available: int = 2,
    total: int = 2,
    generation: int = 3,
    observed: int = 3,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    available_condition = {"type": "Available", "status": "True" if available else "False"}
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": wanted},
        "status": {
            "observedGeneration": observed,
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "conditions": [available_condition, *(conditions or [])],
        },
    }


def judged(
    dep: dict[str, Any] | None, problem: status.Problem | None = None
) -> dict[str, tuple[str, str]]:
    result = status.compute(factories.llm_body(generation=4), dep, problem, NOW)
    return {c["type"]: (c["status"], c["reason"]) for c in result["conditions"]}


@pytest.mark.parametrize(
    ("dep", "expected"),
    [
        pytest.param(
            deployment(),
            {
                "Ready": ("True", "Available"),
                "Progressing": ("False", "RolloutComplete"),
                "Degraded": ("False", "AsExpected"),
            },
            id="rolled-out",
        ),
        pytest.param(
            deployment(updated=1, total=3, ready=2, available=2),
            {
                "Ready": ("True", "Available"),
                "Progressing": ("True", "RollingOut"),
                "Degraded": ("False", "AsExpected"),
            },
            id="rolling-while-serving",
        ),
        pytest.param(
            deployment(observed=2),
            {
                "Ready": ("True", "Available"),
                "Progressing": ("True", "RollingOut"),
                "Degraded": ("False", "AsExpected"),
            },
            id="new-template-not-yet-seen",
        ),
        pytest.param(
            deployment(ready=0, available=0, updated=2),
            {
                "Ready": ("False", "MinimumReplicasUnavailable"),
                "Progressing": ("True", "RollingOut"),
                "Degraded": ("False", "AsExpected"),
            },
            id="starting",
        ),
        pytest.param(
            deployment(
                ready=0,
                available=0,
                conditions=[
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": "ReplicaSet has timed out progressing.",
                    }
                ],
            ),
            {
                "Ready": ("False", "MinimumReplicasUnavailable"),
                "Progressing": ("True", "RollingOut"),
                "Degraded": ("True", "ProgressDeadlineExceeded"),
            },
            id="stuck",
        ),
        pytest.param(
            deployment(
                ready=1,
                available=1,
                total=1,
                updated=1,
                conditions=[
                    {
                        "type": "ReplicaFailure",
                        "status": "True",
                        "reason": "FailedCreate",
                        "message": "exceeded quota",
                    }
                ],
            ),
            {
                "Ready": ("True", "Available"),
                "Progressing": ("True", "RollingOut"),
                "Degraded": ("True", "FailedCreate"),
            },
            id="quota",
        ),
        pytest.param(
            None,
            {
                "Ready": ("False", "Creating"),
                "Progressing": ("True", "Creating"),
                "Degraded": ("False", "AsExpected"),
            },
            id="no-deployment-yet",
        ),
    ],
)
def test_conditions_follow_the_deployment(
    dep: dict[str, Any] | None, expected: dict[str, tuple[str, str]]
) -> None:
    assert judged(dep) == expected


def test_a_problem_with_pods_of_an_earlier_spec_serving_is_degraded_but_still_ready() -> None:
    problem = status.Problem("SpecRejected", "applying the Deployment: HTTP 422 Invalid")
    assert judged(deployment(), problem) == {
        "Ready": ("True", "Available"),
        "Progressing": ("False", "SpecRejected"),
        "Degraded": ("True", "SpecRejected"),
    }


def test_a_problem_with_nothing_serving_makes_the_policy_not_ready() -> None:
    problem = status.Problem("SecretNotFound", "Secret team-a/openai not found")
    assert judged(None, problem) == {
        "Ready": ("False", "SecretNotFound"),
        "Progressing": ("False", "SecretNotFound"),
        "Degraded": ("True", "SecretNotFound"),
    }


def test_status_carries_generation_endpoint_and_ready_replicas() -> None:
    result = status.compute(factories.llm_body(generation=4), deployment(ready=1), None, NOW)
    assert result["observedGeneration"] == 4
    assert result["endpoint"] == "http://openai-llm.team-a.svc:8080/v1"
    assert result["readyReplicas"] == 1
    assert "hitRatio" not in result  # the timer's to write; a merge patch keeps it
    assert {c["observedGeneration"] for c in result["conditions"]} == {4}
    assert {c["lastTransitionTime"] for c in result["conditions"]} == {"2025-03-01T12:00:00Z"}


def test_transition_time_is_kept_while_a_condition_holds_and_moves_when_it_flips() -> None:
    body = factories.llm_body(generation=4)
    body["status"] = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Available",
                "lastTransitionTime": EARLIER,
            },
            {"type": "Degraded", "status": "True", "reason": "X", "lastTransitionTime": EARLIER},
        ]
    }
    result = status.compute(body, deployment(), None, NOW)
    times = {c["type"]: c["lastTransitionTime"] for c in result["conditions"]}
    assert times == {
        "Ready": EARLIER,
        "Progressing": "2025-03-01T12:00:00Z",
        "Degraded": "2025-03-01T12:00:00Z",
    }


def test_a_spec_that_fails_validation_still_gets_a_status() -> None:
    body = factories.llm_body(batching={"maxBatchSize": "lots"})
    problem = status.Problem(
        "InvalidSpec", "spec.batching.maxBatchSize: not an integer", retry=False
    )
    result = status.compute(body, None, problem, NOW)
    assert result["conditions"][0]["reason"] == "InvalidSpec"


def test_changed_looks_only_at_the_fields_being_written() -> None:
    new = {"readyReplicas": 2, "endpoint": "e"}
    assert not status.changed({"readyReplicas": 2, "endpoint": "e", "hitRatio": 0.5}, new)
    assert status.changed({"readyReplicas": 1, "endpoint": "e"}, new)


@pytest.mark.parametrize(
    ("spec", "store"),
    [
        pytest.param({}, "memory", id="default-memory-cache"),
        pytest.param(
            {"cache": {"backend": "tiered", "redis": {"urlSecretRef": {"name": "r", "key": "u"}}}},
            "redis",
            id="auto-follows-a-redis-cache",
        ),
        pytest.param(
            {"deferred": {"store": "memory"}, "cache": {"backend": "memory"}}, "memory", id="named"
        ),
    ],
)
def test_the_status_says_where_deferred_jobs_live(spec: dict[str, Any], store: str) -> None:
    result = status.compute(factories.llm_body(**spec), deployment(ready=1), None, NOW)
    assert result["deferredStore"] == store


def test_a_spec_that_fails_validation_names_no_deferred_store() -> None:
    body = factories.llm_body(deferred={"maxItemsPerBatch": 0})
    assert "deferredStore" not in status.compute(body, None, None, NOW)
