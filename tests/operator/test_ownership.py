"""Whose an object is, whether it drifted, who holds a field: pure checks on live objects."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sluice.operator import ownership


def live() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "openai-llm",
            "labels": {"a": "b"},
            "ownerReferences": [{"uid": "policy-uid", "controller": True}],
            "resourceVersion": "7",
            "managedFields": [
                {"manager": "sluice-operator", "operation": "Apply",
                 "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}},
                {"manager": "kube-controller-manager", "operation": "Update",
                 "fieldsV1": {"f:status": {}}},
            ],
        },
        "spec": {"replicas": 2},
        "status": {"readyReplicas": 1},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("owners", "controlled"),
    [
        pytest.param([{"uid": "policy-uid", "controller": True}], True, id="ours"),
        pytest.param([{"uid": "policy-uid"}], False, id="owner-not-controller"),
        pytest.param([{"uid": "other", "controller": True}], False, id="someone-elses"),
        pytest.param([], False, id="nobodys"),
    ],
)
def test_only_the_controlling_owner_counts(owners: list[Any], controlled: bool) -> None:
    obj = live()
    obj["metadata"]["ownerReferences"] = owners
    assert ownership.controlled_by(obj, "policy-uid") is controlled


def test_a_status_update_is_no_drift_and_an_edit_of_what_was_applied_is() -> None:
    applied = live()
    status_moved = copy.deepcopy(applied)
    status_moved["status"] = {"readyReplicas": 2}
    status_moved["metadata"]["resourceVersion"] = "8"
    status_moved["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "2"}
    scaled = copy.deepcopy(applied)
    scaled["spec"]["replicas"] = 5
    relabelled = copy.deepcopy(applied)
    relabelled["metadata"]["labels"] = {}

    assert ownership.fingerprint(status_moved) == ownership.fingerprint(applied)
    assert ownership.fingerprint(scaled) != ownership.fingerprint(applied)
    assert ownership.fingerprint(relabelled) != ownership.fingerprint(applied)


def test_manages_reads_a_managers_applied_fields_only() -> None:
    obj = live()
    assert ownership.manages(obj, "sluice-operator", "spec", "replicas")
    assert not ownership.manages(obj, "sluice-operator", "spec", "paused")
    assert not ownership.manages(obj, "kube-controller-manager", "status")  # an Update
    obj["metadata"].pop("managedFields")
    assert not ownership.manages(obj, "sluice-operator", "spec", "replicas")
