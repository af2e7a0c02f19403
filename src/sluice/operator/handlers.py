"""kopf handlers: thin glue from cluster events to `reconcile`, and the operator's lifecycle.

* A policy event (created, changed, listed at start-up): reconcile it when its spec is one
  not reconciled yet; a deleted policy is forgotten. Plain event handlers rather than kopf's
  create/update handlers: those diff against the last spec kopf handled, so a revert to it
  after a failed change looked like no change and never ran (and they write progress
  annotations); `reconcile` keeps its own memory and retries (`tracking`).
* An owned Deployment, ConfigMap, Service or PodDisruptionBudget changed: reconcile its policy
  only if the object drifted from what was applied; the Deployment's status moving only
  refreshes the policy's status.
* Every `--secret-interval` seconds: re-read the referenced Secrets, and reconcile the policies
  whose Secrets changed, so a rotated key rolls the pods.
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
from sluice.operator import kube, metrics, options, podmetrics, reconcile, resources

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
        reconciler=reconcile.Reconciler(client, chosen.proxy_image, warn=warn),
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
    """The background loops: one refreshes every policy's status from its pods (the indexes
    list the policies), one re-reads the referenced Secrets (`Reconciler.recheck_secrets`)."""
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
    secrets = state.reconciler.recheck_secrets_forever(chosen.secret_interval_seconds)
    state.tasks.append(asyncio.create_task(secrets, name="secret rotation"))


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


@kopf.on.event(GROUP, VERSION, LLM, registry=registry)
@kopf.on.event(GROUP, VERSION, MCP, registry=registry)
async def policy_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Reconcile a spec not reconciled yet; forget a policy that is gone."""
    reconciler = runtime(memo).reconciler
    if type == "DELETED":
        reconciler.forget(body)
    else:
        await reconciler.observe(body)


async def child_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Reconcile the owner if the object drifted, so an edit by someone else is undone."""
    await runtime(memo).reconciler.child_changed(body, deleted=type == "DELETED")


for child in options.CHILDREN:  # the API server filters them too: options.MANAGED_SELECTOR
    kopf.on.event(*child, labels=resources.MANAGED_BY, registry=registry)(child_event)


@kopf.index(GROUP, VERSION, LLM, registry=registry)
def llm_policies(body: kopf.Body, **_: Any) -> dict[podmetrics.Key, podmetrics.Known]:
    return podmetrics.index_entry(body)


@kopf.index(GROUP, VERSION, MCP, registry=registry)
def tool_policies(body: kopf.Body, **_: Any) -> dict[podmetrics.Key, podmetrics.Known]:
    return podmetrics.index_entry(body)


def warn(body: Mapping[str, Any], reason: str, message: str) -> None:
    """A Warning Event on the policy (`reconcile` posts one per distinct problem)."""
    # kopf reads only apiVersion, kind and metadata: a plain object from the API will do.
    kopf.warn(cast(kopf.Body, body), reason=reason, message=message)
