"""kopf handlers: thin glue from cluster events to `reconcile`, and the operator's lifecycle.

* A policy created, changed, or found at start-up: reconcile it.
* An owned Deployment, ConfigMap, Service or PodDisruptionBudget changed (status or someone's
  edit): reconcile its policy, which re-applies what drifted and refreshes the status.
* Every minute (`--scrape-interval`), in one background loop: read each policy's proxies' own
  metrics into its status: hit ratio, and for a ToolCachePolicy its servers up and tools
  (`podmetrics`; kopf indexes list the policies, since a kopf timer would add a finalizer).
* Signing in: one login function (`kube.login`) for kopf and for the operator's own calls.

The handlers register with this module's own `registry` (not kopf's global default), which
`runner` hands to kopf, so importing the module anywhere else has no effect on an operator.
Clients live on `kopf.Memo` as one `Runtime`, created in the startup handler.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any, cast
from wsgiref.simple_server import WSGIServer

import aiohttp
import kopf

from sluice.api import policies
from sluice.operator import kube, metrics, options, podmetrics, reconcile, resources, status

GROUP, VERSION = policies.GROUP, policies.VERSION
LLM, MCP = (policies.KINDS[kind].plural for kind in ("LLMBatchPolicy", "ToolCachePolicy"))
PLURALS = (LLM, MCP)

registry = kopf.OperatorRegistry()


@dataclasses.dataclass
class Runtime:
    """What the handlers share, made once at start-up."""

    client: kube.Client
    reconciler: reconcile.Reconciler
    scraper: aiohttp.ClientSession
    metrics_server: WSGIServer
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)


def runtime(memo: kopf.Memo) -> Runtime:
    return cast(Runtime, memo.runtime)


@kopf.on.startup(errors=kopf.ErrorsMode.PERMANENT, registry=registry)
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    chosen: options.Options = memo.options
    options.configure(settings)
    client = kube.Client(settings, logger)
    timeout = aiohttp.ClientTimeout(total=options.SCRAPE_TIMEOUT_SECONDS)
    server, _thread = metrics.serve(chosen.metrics_port)
    memo.runtime = Runtime(
        client=client,
        reconciler=reconcile.Reconciler(client, chosen.proxy_image),
        scraper=aiohttp.ClientSession(timeout=timeout),
        metrics_server=server,
    )


@kopf.on.login(registry=registry)
def login(settings: kopf.OperatorSettings, logger: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf signs in exactly as the operator's own client does."""
    return kube.login(settings, logger)


@kopf.on.startup(retries=int(options.CRD_WAIT_SECONDS / 2), backoff=2, registry=registry)
async def crds_served(memo: kopf.Memo, **_: Any) -> None:
    """Wait for our CRDs: kopf scans resources once (scanning is off), right after start-up."""
    group_version = f"{GROUP}/{VERSION}"
    for plural in PLURALS:
        if not await runtime(memo).client.served(group_version, plural):
            raise kopf.TemporaryError(f"{plural}.{GROUP} is not served yet", delay=2)


@kopf.on.startup(registry=registry)
async def start_pod_metrics(memo: kopf.Memo, **kwargs: Any) -> None:
    """One loop refreshes every policy's status from its pods; the indexes list the policies."""
    indexes: tuple[kopf.Index[podmetrics.Key, podmetrics.Known], ...] = (
        kwargs["llm_policies"],  # kopf passes each index by its handler's name
        kwargs["tool_policies"],
    )

    def known() -> list[tuple[podmetrics.Key, podmetrics.Known]]:
        return [(key, policy) for i in indexes for key, store in i.items() for policy in store]

    state = runtime(memo)
    chosen: options.Options = memo.options
    loop = podmetrics.refresh_forever(
        state.client, state.scraper, known, chosen.scrape_interval_seconds
    )
    state.tasks.append(asyncio.create_task(loop, name="pod metrics"))


@kopf.on.cleanup(registry=registry)
async def stop(memo: kopf.Memo, **_: Any) -> None:
    if "runtime" not in memo:  # start-up failed before making it
        return
    state = runtime(memo)
    for task in state.tasks:
        task.cancel()
    await asyncio.gather(*state.tasks, return_exceptions=True)
    state.metrics_server.shutdown()
    await state.scraper.close()
    await state.client.close()


@kopf.on.resume(GROUP, VERSION, LLM, registry=registry)
@kopf.on.create(GROUP, VERSION, LLM, registry=registry)
@kopf.on.update(GROUP, VERSION, LLM, registry=registry)
@kopf.on.resume(GROUP, VERSION, MCP, registry=registry)
@kopf.on.create(GROUP, VERSION, MCP, registry=registry)
@kopf.on.update(GROUP, VERSION, MCP, registry=registry)
async def policy_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Reconcile; a problem is retried (a Secret may appear) unless retrying cannot help."""
    outcome = await runtime(memo).reconciler.reconcile(body, trigger="policy")
    report(body, outcome)
    if (problem := outcome.problem) is None:
        return
    if problem.retry:
        raise kopf.TemporaryError(problem.message, delay=options.RETRY_DELAY_SECONDS)
    raise kopf.PermanentError(problem.message)


async def child_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Reconcile the owner, so a status change shows and an edit by someone else is undone."""
    if (owner := resources.owner_of(body)) is None:
        return
    kind, name = owner
    state = runtime(memo)
    url_path = kube.path(policies.API_VERSION, kind, body["metadata"]["namespace"], name)
    if (policy := await state.client.get(url_path)) is not None:
        report(policy, await state.reconciler.reconcile(policy, trigger="child"))


for child in options.CHILDREN:  # the API server filters them too: options.MANAGED_SELECTOR
    kopf.on.event(*child, labels=resources.MANAGED_BY, registry=registry)(child_changed)


@kopf.index(GROUP, VERSION, LLM, registry=registry)
def llm_policies(body: kopf.Body, **_: Any) -> dict[podmetrics.Key, podmetrics.Known]:
    return podmetrics.index_entry(body)


@kopf.index(GROUP, VERSION, MCP, registry=registry)
def tool_policies(body: kopf.Body, **_: Any) -> dict[podmetrics.Key, podmetrics.Known]:
    return podmetrics.index_entry(body)


def report(body: Mapping[str, Any], outcome: reconcile.Outcome) -> None:
    """One Warning Event per new problem, on the policy (not one per retry)."""
    problem: status.Problem | None = outcome.problem
    if problem is not None and outcome.newly_failing:
        # kopf reads only apiVersion, kind and metadata: a plain object from the API will do.
        kopf.warn(cast(kopf.Body, body), reason=problem.reason, message=problem.message)
