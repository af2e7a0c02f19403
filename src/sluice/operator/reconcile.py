"""Reconcile: one idempotent function from a policy object to its proxy objects and status.

    policy -> validate -> render config -> admin token -> read Secrets -> check ownership
           -> apply (server-side: ConfigMap, Deployment, then the rest) -> status

Every trigger runs the same `Reconciler.reconcile()`: the policy's spec changed (`observe`), a
child drifted (`child_changed`; a status-only change of the Deployment just refreshes the
status), a referenced Secret changed (`recheck_secrets`, polled: watching Secrets would need
the right to read every Secret), a retry came due, or the operator started. Drift is repaired by
re-applying the desired state: a forced server-side apply takes back every field we set, and an
unchanged apply is a no-op for the API server.

What cannot be honoured becomes a `status.Problem`, never an exception: `Degraded=True` with
its reason (and `Ready=False` unless pods of an earlier spec still serve), one Warning Event
per distinct problem, and a retry with backoff (`tracking.retry_delay`) where one can help.
The config is content-addressed (`resources.config_map`), so a refused Deployment leaves the
running pods and their config exactly as they were, and a revert is just another apply. An
object of a child's name that the policy does not control is never taken over (`Conflict`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Literal

import aiohttp
import pydantic

from sluice import api
from sluice.api import policies
from sluice.operator import kube, metrics, ownership, proxyconfig, resources, status, tracking

Key = tracking.Key
Result = Literal["applied", "blocked", "superseded", "deleting", "error"]
Warn = Callable[[Mapping[str, Any], str, str], None]  # (policy body, reason, message)
log = logging.getLogger(__name__)

# Its own manager, so a Deployment's replicas can be handed to an autoscaler (see `hand_over`).
HANDOVER_MANAGER = "sluice-operator-handover"
UNREACHABLE = "ApiUnavailable"
# The API server no longer answering, or answering with something other than a refusal.
API_FAILURES = (aiohttp.ClientError, TimeoutError, kube.ApiError)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return body["kind"], meta["namespace"], meta["name"]


def named(key: Key) -> str:
    """How log lines name a policy: `LLMBatchPolicy team-a/openai`."""
    kind, namespace, name = key
    return f"{kind} {namespace}/{name}"


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


def refusal(doing: str, error: kube.ApiError) -> status.Problem:
    """A refused apply: the spec itself (400, 422: `SpecRejected`) or anything else."""
    reason = "SpecRejected" if error.status in (400, 422) else "ApplyFailed"
    return status.Problem(reason, f"{doing}: {error}")


class Reconciler:
    """Applies policies, one at a time per policy, never an older generation after a newer."""

    def __init__(
        self,
        client: kube.Client,
        proxy_image: str,
        warn: Warn = lambda body, reason, message: None,
        clock: Callable[[], datetime.datetime] = utcnow,
    ) -> None:
        self.client = client
        self.proxy_image = proxy_image
        self.warn = warn
        self.clock = clock
        # A lock lives while someone holds or awaits it; then it is dropped with its entry.
        self.locks: weakref.WeakValueDictionary[Key, asyncio.Lock] = weakref.WeakValueDictionary()
        self.tracked: dict[Key, tracking.Tracked] = {}

    def __repr__(self) -> str:
        return f"<Reconciler image={self.proxy_image} policies={len(self.tracked)}>"

    # --- triggers ---------------------------------------------------------------------------

    async def observe(self, body: Mapping[str, Any]) -> None:
        """A policy event: reconcile when its spec is one not reconciled yet (a status patch,
        ours or another's, is not), or when the API server was away the last time."""
        tracked = self.track(body)
        unreachable = tracked.problem is not None and tracked.problem.reason == UNREACHABLE
        if tracked.generation != body["metadata"].get("generation", 0) or unreachable:
            await self.reconcile(body, trigger="policy")

    def forget(self, body: Mapping[str, Any]) -> None:
        """The policy is gone: drop what is remembered of it, and its pending retry."""
        tracked = self.tracked.get(key := key_of(body))
        if tracked is not None and tracked.uid == body["metadata"].get("uid"):
            tracked.cancel_retry()
            del self.tracked[key]

    async def child_changed(self, body: Mapping[str, Any], deleted: bool) -> None:
        """An owned object changed: reconcile only if it drifted from what was applied."""
        if (owner := resources.owner_of(body)) is None:
            return
        key: Key = (owner[0], body["metadata"]["namespace"], owner[1])
        url_path = kube.path_of(body)
        # Decided under the policy's lock: an event that arrives while the policy is being
        # applied is judged against what that apply leaves, not against the one before.
        async with self.locks.setdefault(key, asyncio.Lock()):
            tracked = self.tracked.get(key)
            if tracked is not None and url_path not in tracked.fingerprints:
                return  # not one of the current children: an old ConfigMap, say
            drifted = (
                tracked is None
                or deleted
                or tracked.fingerprints[url_path] != ownership.fingerprint(body)
            )
        if drifted:
            await self.reconcile_latest(key, trigger="child")
        elif body["kind"] == "Deployment":
            await self.refresh(key, body)

    async def recheck_secrets(self) -> None:
        """Reconcile each policy whose referenced Secrets changed since they were applied."""
        for key, tracked in list(self.tracked.items()):
            if (rendered := tracked.rendered) is None:
                continue  # not rendered yet, or a spec that cannot be
            try:
                found, _ = await self.read_secrets(key[1], rendered)
            except API_FAILURES as error:
                log.debug("%s: Secrets not re-read: %s", named(key), error)
                continue
            if rendered.secrets_checksum(found) != tracked.secrets_checksum:
                await self.reconcile_latest(key, trigger="secret")

    async def recheck_secrets_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.recheck_secrets()

    async def reconcile_latest(self, key: Key, trigger: metrics.Trigger) -> None:
        """Read the policy afresh and reconcile it; one that is gone is forgotten."""
        kind, namespace, name = key
        try:
            body = await self.client.get(kube.path(policies.API_VERSION, kind, namespace, name))
        except API_FAILURES as error:
            log.debug("%s: not read: %s", named(key), error)
            return
        if body is None:
            if (tracked := self.tracked.pop(key, None)) is not None:
                tracked.cancel_retry()
            return
        self.track(body)
        await self.reconcile(body, trigger=trigger)

    # --- the reconcile ----------------------------------------------------------------------

    def track(self, body: Mapping[str, Any]) -> tracking.Tracked:
        """What is remembered of the policy; a fresh record for a new object of its name."""
        key, uid = key_of(body), body["metadata"].get("uid", "")
        tracked = self.tracked.get(key)
        if tracked is None or tracked.uid != uid:
            if tracked is not None:
                tracked.cancel_retry()
            tracked = tracking.Tracked(uid, reported=tracking.reported_in(body.get("status") or {}))
            self.tracked[key] = tracked
        return tracked

    async def reconcile(self, body: Mapping[str, Any], trigger: metrics.Trigger) -> Result:
        """Bring the policy's objects and status in line with its spec (see the module doc)."""
        kind = body["kind"]
        with metrics.reconcile_duration.labels(kind).time():
            result, problem = await self.locked(body)
        metrics.reconciles.labels(kind, trigger, result).inc()
        if problem is not None:
            metrics.problems.labels(kind, problem.reason).inc()
        return result

    async def locked(self, body: Mapping[str, Any]) -> tuple[Result, status.Problem | None]:
        key, meta = key_of(body), body["metadata"]
        tracked = self.track(body)
        async with self.locks.setdefault(key, asyncio.Lock()):
            if meta.get("deletionTimestamp"):
                return "deleting", None  # the garbage collector is removing the children
            generation = meta.get("generation", 0)
            if generation < tracked.applied:
                return "superseded", None
            problem = await self.converge(body, tracked)
            tracked.generation = generation
            self.settle(body, tracked, problem)
        if problem is None:
            return "applied", None
        return ("error" if problem.reason == UNREACHABLE else "blocked"), problem

    async def converge(
        self, body: Mapping[str, Any], tracked: tracking.Tracked
    ) -> status.Problem | None:
        """Apply what the spec asks for and write the status; the problem, if any."""
        key = key_of(body)
        # Set again once the spec renders: a spec that cannot be has no Secrets to recheck
        # (a rotation could not roll its pods, only a new spec can).
        tracked.rendered = None
        try:
            policy, problem = parse(body)
            deployment = None
            if policy is not None:
                deployment, problem = await self.apply(policy, tracked)
            # Pods of an earlier spec may still serve, and `Ready` says so; not under a
            # Conflict, where the Service (say) that clients reach is someone else's.
            if problem is not None and deployment is None and problem.reason != "Conflict":
                deployment = await self.own(self.deployment_path(key), tracked.uid)
            await self.write_status(body, deployment, problem)
            if deployment is not None:
                await self.prune_configs(key, tracked, deployment)
        except API_FAILURES as error:
            return status.Problem(UNREACHABLE, f"the Kubernetes API failed: {error}")
        return problem

    def settle(
        self, body: Mapping[str, Any], tracked: tracking.Tracked, problem: status.Problem | None
    ) -> None:
        """Remember the outcome: post an Event for a new problem, schedule or drop a retry."""
        key = key_of(body)
        tracked.problem = problem
        tracked.cancel_retry()
        if problem is None:
            tracked.failures, tracked.reported = 0, None
            return
        if (problem.reason, problem.message) != tracked.reported:
            log.warning("%s: %s: %s", named(key), problem.reason, problem.message)
            if problem.reason != UNREACHABLE:  # an Event could not be posted either
                self.warn(body, problem.reason, problem.message)
            tracked.reported = (problem.reason, problem.message)
        if problem.retry:
            tracked.failures += 1
            delay = tracking.retry_delay(tracked.failures)
            log.debug("%s: retry %d in %.0f s", named(key), tracked.failures, delay)
            tracked.retry = asyncio.create_task(self.retry_later(key, delay), name=named(key))

    async def retry_later(self, key: Key, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.reconcile_latest(key, trigger="retry")

    async def apply(
        self, policy: policies.Policy, tracked: tracking.Tracked
    ) -> tuple[dict[str, Any] | None, status.Problem | None]:
        """Apply every desired object and delete unwanted ones; the applied Deployment."""
        try:
            rendered = proxyconfig.render(policy)
        except api.ConfigError as error:
            return None, status.Problem("InvalidConfig", str(error), retry=False)
        namespace, uid = policy.metadata.namespace, policy.metadata.uid
        if (problem := await self.ensure_admin_secret(policy)) is not None:
            return None, problem
        found, problem = await self.read_secrets(namespace, rendered)
        # What was read, even when it is not enough: `recheck_secrets` then notices a change.
        tracked.rendered, tracked.secrets_checksum = rendered, rendered.secrets_checksum(found)
        if problem is not None:
            return None, problem
        monitors = await self.client.served("monitoring.coreos.com/v1", "servicemonitors")
        checksum = tracked.secrets_checksum
        desired = resources.desired(policy, rendered, self.proxy_image, monitors, checksum)
        live = await asyncio.gather(*(self.client.get(kube.path_of(o)) for o in desired.apply))
        for obj, current in zip(desired.apply, live, strict=True):
            if current is not None and not ownership.controlled_by(current, uid):
                message = (
                    f"{obj['kind']} {namespace}/{obj['metadata']['name']} exists and is not"
                    " owned by this policy; it is left alone"
                )
                return None, status.Problem("Conflict", message)
        applied: dict[str, dict[str, Any]] = {}
        fingerprints: dict[str, str] = {}
        doing = ""
        try:
            await self.hand_over(policy, desired, live)
            for obj in desired.apply:
                doing = f"applying the {obj['kind']} {obj['metadata']['name']}"
                applied[obj["kind"]] = result = await self.client.apply(obj)
                fingerprints[kube.path_of(obj)] = ownership.fingerprint(result)
            for ref in desired.delete:
                doing = f"deleting the {ref.kind} {ref.name}"
                await self.delete_owned(ref, uid)
        except kube.ApiError as error:
            tracked.fingerprints.update(fingerprints)
            return None, refusal(doing, error)
        tracked.fingerprints = fingerprints  # only the current children: not older ConfigMaps
        generation = policy.metadata.generation
        if tracked.applied != generation:
            key = (policy.kind, namespace, policy.metadata.name)
            log.info("%s: generation %d applied", named(key), generation)
        tracked.applied = generation
        tracked.config_map = resources.config_map_name(policy, rendered)
        return applied["Deployment"], None

    async def hand_over(
        self,
        policy: policies.Policy,
        desired: resources.Desired,
        live: list[dict[str, Any] | None],
    ) -> None:
        """Before leaving `replicas` to an autoscaler, hand the field to a second manager.

        Server-side apply resets a field that its only manager stops setting, so applying the
        Deployment without `replicas` would drop it to 1 until the autoscaler acts. Applied
        first under another manager (with its current value), the field stays as it is, and
        the autoscaler takes it over from there.
        """
        if policy.spec.proxy.autoscaling is None:
            return
        current = next((o for o in live if o and o["kind"] == "Deployment"), None)
        if current is None or not ownership.manages(
            current, kube.FIELD_MANAGER, "spec", "replicas"
        ):
            return
        deployment = desired.find("Deployment")
        assert deployment is not None
        meta = deployment["metadata"]
        patch = {
            "apiVersion": deployment["apiVersion"],
            "kind": deployment["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": current["spec"].get("replicas", 1)},
        }
        await self.client.apply(patch, manager=HANDOVER_MANAGER)

    async def ensure_admin_secret(self, policy: policies.Policy) -> status.Problem | None:
        """Make the admin token's Secret once, when the spec names none; never take one over."""
        if policy.spec.admin.token_secret_ref is not None:
            return None
        obj = resources.admin_secret(policy, secrets.token_urlsafe(32))
        current = await self.client.get(kube.path_of(obj))
        if current is None and await self.client.create(obj):
            return None
        current = current or await self.client.get(kube.path_of(obj))
        if current is not None and not ownership.controlled_by(current, policy.metadata.uid):
            name = obj["metadata"]["name"]
            message = (
                f"Secret {policy.metadata.namespace}/{name} exists and is not owned by this"
                " policy; it is left alone (name it in admin.tokenSecretRef to use it)"
            )
            return status.Problem("Conflict", message)
        return None

    async def read_secrets(
        self, namespace: str, rendered: proxyconfig.Rendered
    ) -> tuple[dict[str, dict[str, str] | None], status.Problem | None]:
        """Each Secret the config reads, with its data (None when missing), and the first
        Secret or key it needs that is missing or unreadable, as a problem.

        Checked before applying, so a typo in a new spec never replaces running pods with pods
        that cannot start. The values only ever enter the Secrets checksum.
        """
        found: dict[str, dict[str, str] | None] = {}
        for name in rendered.secret_names:
            try:
                secret = await self.client.get(kube.path("v1", "Secret", namespace, name))
            except kube.ApiError as error:
                message = f"cannot read Secret {namespace}/{name}: {error.message or error}"
                return found, status.Problem("SecretNotReadable", message)
            found[name] = None if secret is None else dict(secret.get("data") or {})
        for name in rendered.secret_names:
            if (data := found[name]) is None:
                return found, status.Problem(
                    "SecretNotFound", f"Secret {namespace}/{name} not found"
                )
            for missing in sorted({e.key for e in rendered.env if e.secret == name} - set(data)):
                message = f"Secret {namespace}/{name} has no key {missing!r}"
                return found, status.Problem("SecretKeyNotFound", message)
        return found, None

    async def delete_owned(self, ref: resources.Ref, owner_uid: str) -> None:
        """Delete an object the policy no longer wants, but only if the policy owns it."""
        url_path = kube.path(ref.api_version, ref.kind, ref.namespace, ref.name)
        current = await self.own(url_path, owner_uid)
        if current is not None:
            await self.client.delete(url_path, current["metadata"]["uid"])

    async def own(self, url_path: str, owner_uid: str) -> dict[str, Any] | None:
        """The object at `url_path` if the policy controls it, else None."""
        current = await self.client.get(url_path)
        return current if current and ownership.controlled_by(current, owner_uid) else None

    # --- status and clean-up ----------------------------------------------------------------

    async def refresh(self, key: Key, deployment: Mapping[str, Any]) -> None:
        """The Deployment's status moved: write the policy's, prune configs once rolled out."""
        kind, namespace, name = key
        try:
            body = await self.client.get(kube.path(policies.API_VERSION, kind, namespace, name))
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            async with self.locks.setdefault(key, asyncio.Lock()):
                tracked = self.track(body)
                await self.write_status(body, deployment, tracked.problem)
                await self.prune_configs(key, tracked, deployment)
        except API_FAILURES as error:
            log.debug("%s: status not refreshed: %s", named(key), error)

    async def prune_configs(
        self, key: Key, tracked: tracking.Tracked, deployment: Mapping[str, Any]
    ) -> None:
        """Once the Deployment has rolled out the current config, delete the older ones."""
        current = tracked.config_map
        if current is None or current == tracked.pruned_for:
            return
        if (
            resources.mounted_config(deployment) != current
            or not status.rollout(deployment).complete
        ):
            return
        kind, namespace, name = key
        selector = resources.label_selector(kind, name)
        for config in await self.client.list(kube.path("v1", "ConfigMap", namespace), selector):
            meta = config["metadata"]
            if meta["name"] != current and ownership.controlled_by(config, tracked.uid):
                url_path = kube.path("v1", "ConfigMap", namespace, meta["name"])
                await self.client.delete(url_path, meta["uid"])
        tracked.pruned_for = current

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
