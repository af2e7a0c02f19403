"""Pure status computation: the policy's conditions from its Deployment and any problem found.

Conditions follow KEP-1623 (`metav1.Condition`): `Ready` (clients can use the endpoint),
`Progressing` (a rollout is under way) and `Degraded` (something needs a person). A condition
keeps its `lastTransitionTime` while its status stays the same. `reconcile` calls `compute()`
and patches the result; tests/operator tests it without a cluster.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pydantic

from sluice.api import llm, policies
from sluice.operator import resources

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a spec the API server accepted cannot be honoured (a missing Secret, say)."""

    reason: str
    message: str
    retry: bool = True  # False: only a new spec (or a new operator) can help


@dataclasses.dataclass(frozen=True)
class Rollout:
    """What the Deployment says about its pods, reduced to what the conditions need."""

    wanted: int
    updated: int
    ready: int
    available: int
    total: int
    current: bool  # the Deployment controller has seen the latest pod template
    available_condition: bool
    failure: Problem | None  # ProgressDeadlineExceeded or ReplicaFailure

    @property
    def complete(self) -> bool:
        """`kubectl rollout status`'s test: every pod updated and available, no old ones."""
        wanted = self.wanted
        return self.current and self.updated == self.total == self.available == wanted


def rollout(deployment: Mapping[str, Any]) -> Rollout:
    """Read a Deployment's spec and status."""
    status = deployment.get("status", {})
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    return Rollout(
        wanted=deployment.get("spec", {}).get("replicas", 1),
        updated=status.get("updatedReplicas", 0),
        ready=status.get("readyReplicas", 0),
        available=status.get("availableReplicas", 0),
        total=status.get("replicas", 0),
        current=status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0),
        available_condition=conditions.get("Available", {}).get("status") == "True",
        failure=deployment_failure(conditions),
    )


def deployment_failure(conditions: Mapping[str, Mapping[str, Any]]) -> Problem | None:
    """A rollout that gave up, or pods that could not be created (quota, admission)."""
    progressing = conditions.get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Problem("ProgressDeadlineExceeded", progressing.get("message", ""))
    failure = conditions.get("ReplicaFailure", {})
    if failure.get("status") == "True":
        return Problem(failure.get("reason") or "ReplicaFailure", failure.get("message", ""))
    return None


Judgement = tuple[Literal["True", "False", "Unknown"], str, str]


def judge(problem: Problem | None, state: Rollout | None) -> dict[str, Judgement]:
    """(status, reason, message) of each condition.

    A problem with the latest spec leaves `Ready` to the pods of the last good one: while they
    serve, the endpoint works, and `Degraded` says why the spec is not rolled out.
    """
    if problem is not None:
        blocked: Judgement = ("False", problem.reason, problem.message)
        why: Judgement = ("True", problem.reason, problem.message)
        if state is None:
            return {READY: blocked, PROGRESSING: blocked, DEGRADED: why}
        return {READY: serving(state), PROGRESSING: blocked, DEGRADED: why}
    if state is None:
        creating: Judgement = ("False", "Creating", "the proxy Deployment is being created")
        return {
            READY: creating,
            PROGRESSING: ("True", *creating[1:]),
            DEGRADED: ("False", "AsExpected", ""),
        }
    pods = f"{state.ready}/{state.wanted} proxy pods ready"
    progressing: Judgement = (
        ("False", "RolloutComplete", pods)
        if state.complete
        else (
            "True",
            "RollingOut",
            f"{state.updated} of {state.wanted} pods updated, {state.available} available",
        )
    )
    degraded: Judgement = (
        ("True", state.failure.reason, state.failure.message)
        if state.failure
        else ("False", "AsExpected", "")
    )
    return {READY: serving(state), PROGRESSING: progressing, DEGRADED: degraded}


def serving(state: Rollout) -> Judgement:
    """`Ready` from the Deployment's Available condition."""
    pods = f"{state.ready}/{state.wanted} proxy pods ready"
    if state.available_condition:
        return ("True", "Available", pods)
    return ("False", "MinimumReplicasUnavailable", pods)


def conditions(
    judgements: Mapping[str, Judgement],
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    now: datetime.datetime,
) -> list[policies.Condition]:
    """Conditions in a fixed order; a condition whose status holds keeps its transition time."""
    before = {c.get("type"): c for c in previous}
    result = []
    for type_, (status, reason, message) in judgements.items():
        old = before.get(type_, {})
        since = now
        if old.get("status") == status and old.get("lastTransitionTime"):
            since = datetime.datetime.fromisoformat(old["lastTransitionTime"])
        result.append(
            policies.Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    return result


def compute(
    body: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    problem: Problem | None,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The status to write for a policy object, as camelCase JSON.

    From the raw object rather than the model: a spec that fails validation gets a status too.
    `hitRatio`, `servers` and `tools` are left out: `podmetrics` writes them from the pods'
    own metrics, and a merge patch keeps them.
    """
    meta = body["metadata"]
    generation = meta.get("generation", 0)
    previous = body.get("status") or {}
    state = None if deployment is None else rollout(deployment)
    status = policies.PolicyStatus(
        observed_generation=generation,
        conditions=conditions(
            judge(problem, state), generation, previous.get("conditions", []), now
        ),
        endpoint=resources.endpoint(body["kind"], meta["namespace"], meta["name"]),
        ready_replicas=0 if state is None else state.ready,
    )
    result = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    if body["kind"] == "LLMBatchPolicy":
        store = deferred_store(body.get("spec"))
        if store is not None:
            result["deferredStore"] = store
    return result


def deferred_store(spec: Any) -> str | None:
    """Where the policy's deferred jobs live (`memory`: one replica only); None for a spec that
    does not validate (its status says why elsewhere)."""
    try:
        valid = policies.LLMBatchPolicySpec.model_validate(spec or {})
    except pydantic.ValidationError:
        return None
    return llm.deferred_store(valid.deferred, valid.cache)


def changed(current: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change the stored status (fields it leaves out are kept)."""
    return any(current.get(key) != value for key, value in new.items())
