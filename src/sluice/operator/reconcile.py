"""Reconcile: one idempotent function from a policy object to its proxy objects and status.

    policy -> validate -> render config -> check Secrets -> apply (server-side) -> status

Every trigger (the policy changed, an owned object changed, the operator restarted) runs the
same `Reconciler.reconcile()`, so drift is repaired by re-applying the desired state: a forced
server-side apply takes back every field we set, and an unchanged apply is a no-op for the API
server. What cannot be honoured becomes a `status.Problem`: `Ready=False` with its reason, and
nothing is applied, so the running proxy keeps serving the last good config. `handlers` turn an
outcome into kopf's retries and Events; `resources` and `status` are the pure parts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Literal

import pydantic

from sluice import api
from sluice.api import policies
from sluice.operator import kube, metrics, proxyconfig, resources, status

Key = tuple[str, str, str]  # kind, namespace, name
Result = Literal["applied", "blocked", "superseded", "deleting"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one reconcile did, for the handler that asked."""

    result: Result
    problem: status.Problem | None = None
    newly_failing: bool = False  # a problem that the last status did not show yet


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return body["kind"], meta["namespace"], meta["name"]


def parse(body: Mapping[str, Any]) -> tuple[policies.Policy | None, status.Problem | None]:
    """The policy model, or the problem that prevents it.

    The API server has validated the spec against the CRD, so a failure here means the CRD
    and this operator disagree (one was upgraded without the other): retrying cannot help.
    """
    try:
        return policies.KINDS[body["kind"]].model.model_validate(body), None
    except pydantic.ValidationError as error:
        message = f"spec does not match this operator's schema: {api.config.describe(error)}"
        return None, status.Problem("InvalidSpec", message, retry=False)


class Reconciler:
    """Applies policies, one at a time per policy, never an older generation after a newer."""

    def __init__(
        self,
        client: kube.Client,
        proxy_image: str,
        clock: Callable[[], datetime.datetime] = utcnow,
    ) -> None:
        self.client = client
        self.proxy_image = proxy_image
        self.clock = clock
        # A lock lives while someone holds or awaits it; then it is dropped with its entry.
        self.locks: weakref.WeakValueDictionary[Key, asyncio.Lock] = weakref.WeakValueDictionary()
        # The generation last applied per policy object (by uid: a policy deleted and made
        # again starts at generation 1). Two triggers can race (the policy's own handler with
        # an event body, a child's handler with a fresh read); without this an older spec
        # could be applied last and roll the pods back and forth.
        self.applied: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<Reconciler image={self.proxy_image} policies={len(self.applied)}>"

    async def reconcile(self, body: Mapping[str, Any], trigger: str) -> Outcome:
        """Bring the policy's objects and status in line with its spec (see the module doc)."""
        kind = body["kind"]
        with metrics.reconcile_duration.labels(kind).time():
            try:
                outcome = await self.locked(body)
            except Exception:
                metrics.reconciles.labels(kind, trigger, "error").inc()
                raise
        metrics.reconciles.labels(kind, trigger, outcome.result).inc()
        if outcome.problem is not None:
            metrics.problems.labels(kind, outcome.problem.reason).inc()
        return outcome

    async def locked(self, body: Mapping[str, Any]) -> Outcome:
        key = key_of(body)
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            if body["metadata"].get("deletionTimestamp"):
                return Outcome("deleting")  # the garbage collector is removing the children
            meta = body["metadata"]
            if meta.get("generation", 0) < self.applied.get(meta.get("uid", ""), 0):
                return Outcome("superseded")
            policy, problem = parse(body)
            deployment = None
            if policy is not None:
                deployment, problem = await self.apply(policy)
            if problem is not None:
                deployment = await self.client.get(self.deployment_path(key))
            await self.write_status(body, deployment, problem)
        previous = body.get("status") or {}
        if problem is None:
            return Outcome("applied")
        return Outcome("blocked", problem, status.newly_failing(previous, problem))

    async def apply(
        self, policy: policies.Policy
    ) -> tuple[dict[str, Any] | None, status.Problem | None]:
        """Apply every desired object and delete unwanted ones; the applied Deployment."""
        rendered = proxyconfig.render(policy)
        if (problem := await self.check_secrets(policy, rendered)) is not None:
            return None, problem
        monitors = await self.client.served("monitoring.coreos.com/v1", "servicemonitors")
        desired = resources.desired(policy, rendered, self.proxy_image, monitors)
        applied: dict[str, dict[str, Any]] = {}
        doing = ""
        try:
            for obj in desired.apply:
                doing = f"applying the {obj['kind']}"
                applied[obj["kind"]] = await self.client.apply(obj)
            for ref in desired.delete:
                doing = f"deleting the {ref.kind}"
                await self.delete_owned(ref, policy.metadata.uid)
        except kube.ApiError as error:
            return None, status.Problem("ApplyFailed", f"{doing}: {error}")
        self.applied[policy.metadata.uid] = policy.metadata.generation
        return applied["Deployment"], None

    async def check_secrets(
        self, policy: policies.Policy, rendered: proxyconfig.Rendered
    ) -> status.Problem | None:
        """The first referenced Secret (or key) that is missing or unreadable, as a problem.

        Checked before applying, so a typo in a new spec never replaces running pods with pods
        that cannot start. Only key names are looked at; values are never kept.
        """
        namespace = policy.metadata.namespace
        for name in rendered.secret_names:
            try:
                secret = await self.client.get(kube.path("v1", "Secret", namespace, name))
            except kube.ApiError as error:
                message = f"cannot read Secret {namespace}/{name}: {error.message or error}"
                return status.Problem("SecretNotReadable", message)
            if secret is None:
                return status.Problem("SecretNotFound", f"Secret {namespace}/{name} not found")
            keys = set(secret.get("data") or {})
            for missing in sorted({e.key for e in rendered.env if e.secret == name} - keys):
                message = f"Secret {namespace}/{name} has no key {missing!r}"
                return status.Problem("SecretKeyNotFound", message)
        return None

    async def delete_owned(self, ref: resources.Ref, owner_uid: str) -> None:
        """Delete an object the policy no longer wants, but only if the policy owns it."""
        url_path = kube.path(ref.api_version, ref.kind, ref.namespace, ref.name)
        current = await self.client.get(url_path)
        if current is None:
            return
        owners = current["metadata"].get("ownerReferences", [])
        if any(o.get("uid") == owner_uid and o.get("controller") for o in owners):
            await self.client.delete(url_path, current["metadata"]["uid"])

    async def write_status(
        self,
        body: Mapping[str, Any],
        deployment: Mapping[str, Any] | None,
        problem: status.Problem | None,
    ) -> None:
        """Patch the status subresource when it would change; a policy gone meanwhile is fine."""
        new = status.compute(body, deployment, problem, self.clock())
        if not status.changed(body.get("status") or {}, new):
            return
        kind, namespace, name = key_of(body)
        try:
            await self.client.patch_status(
                kube.path(policies.API_VERSION, kind, namespace, name), new
            )
        except kube.ApiError as error:
            if error.status != 404:
                raise

    @staticmethod
    def deployment_path(key: Key) -> str:
        kind, namespace, name = key
        return kube.path("apps/v1", "Deployment", namespace, resources.child_name(kind, name))
