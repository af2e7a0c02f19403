"""What a policy's proxy pods say in their own `/metrics`, read into the policy's status.

Every policy gets `hitRatio`: hits over look-ups of `sluice_cache_requests_total` (a `result`
other than `bypass`, which was no look-up) for the `cache` labels of its kind
(`policies.Kind.caches`), summed over the ready pods since they started. An LLMBatchPolicy
also gets `callsSavedPerHour` (`sluice_upstream_calls_saved_total` over each pod's uptime), a
ToolCachePolicy gets `servers` (`ready/total`, from `sluice_mcp_upstream_up`) and `tools` (from
`sluice_mcp_tools`); `combine()` says how the pods' views make one. `kubectl get` shows them;
Prometheus and the chart's dashboard remain the place for their history.

Parsing (`parse`) and combining (`combine`) are pure; `scrape()`, `refresh()` and
`refresh_forever()` do the I/O. A pod that cannot be read (a NetworkPolicy, a pod going away, a
page that is no exposition) is left out; with none left the status stays as it was.

One loop for all policies, fed by kopf indexes of the policies (`handlers`), rather than a
kopf timer per policy: kopf puts a finalizer on every object with a timer, and a finalizer
left behind by an uninstalled operator blocks the deletion of every policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from sluice.api import policies
from sluice.operator import kube, metrics, proxyconfig, resources

Key = tuple[str, str, str]  # kind, namespace, name
CONCURRENT_POLICIES = 8
FIELDS = (
    "hitRatio",
    "callsSavedPerHour",
    "servers",
    "tools",
)  # the status fields this module writes
log = logging.getLogger(__name__)

# Matched by sample name: the family name loses `_total` only when a TYPE line says counter.
CACHE_REQUESTS = "sluice_cache_requests_total"
NOT_A_LOOKUP = "bypass"
CALLS_SAVED = "sluice_upstream_calls_saved_total"
STARTED = "process_start_time_seconds"
MIN_UPTIME_SECONDS = 60.0
"""A pod younger than this counts as this old: a rate from seconds of uptime is noise."""
MAX_PAGE_BYTES = 8 * 1024 * 1024
"""A larger page is refused: a proxy's is well under a megabyte, and any pod that carries a
policy's labels is read, so one tenant's pod must not make the operator (which serves every
namespace) hold what it can send in `options.SCRAPE_TIMEOUT_SECONDS`."""
UPSTREAM_UP = "sluice_mcp_upstream_up"
TOOLS = "sluice_mcp_tools"


@dataclasses.dataclass(frozen=True)
class Known:
    """A policy as the kopf indexes hold it: what its status shows of `FIELDS` now, and the
    servers its spec names (None for a kind that has no servers)."""

    shown: Mapping[str, Any]
    servers: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Page:
    """One pod's `/metrics`, reduced to what the status needs."""

    hits: float = 0.0
    lookups: float = 0.0
    up: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    """By server: whether this pod last found it answering. A server it has not contacted yet
    is absent."""
    tools: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """By server: tools in this pod's last good list of it."""
    saved: float | None = None
    """Upstream calls saved since the pod started (every reason); None on a page without the
    series (an MCP gateway's)."""
    started: float | None = None
    """When the pod's process started (Unix seconds)."""


def parse(exposition: str, caches: Collection[str]) -> Page:
    """One `/metrics` page; look-ups count only for the `cache` labels named.

    Raises ValueError for a page that is no Prometheus text exposition.
    """
    hits = lookups = 0.0
    saved = started = None
    up: dict[str, bool] = {}
    tools: dict[str, int] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == CACHE_REQUESTS and labels.get("cache") in caches:
                if (result := labels.get("result")) != NOT_A_LOOKUP:
                    lookups += sample.value
                    hits += sample.value if result == "hit" else 0.0
            elif sample.name == CALLS_SAVED and math.isfinite(sample.value):
                saved = (saved or 0.0) + sample.value
            elif sample.name == STARTED and math.isfinite(sample.value):
                started = sample.value
            elif sample.name == UPSTREAM_UP and "server" in labels:
                up[labels["server"]] = sample.value == 1
            elif sample.name == TOOLS and "server" in labels and math.isfinite(sample.value):
                tools[labels["server"]] = int(sample.value)
    return Page(hits, lookups, up, tools, saved, started)


def combine(
    pages: Sequence[Page], servers: Sequence[str] | None, now: float | None = None
) -> dict[str, Any]:
    """The status fields the pods' pages support, as camelCase JSON; empty without pages.

    `hitRatio` (to three places) is left out before any look-up. Given `now`,
    `callsSavedPerHour` is each pod's calls saved over its uptime, summed (the pods share the
    traffic), from the pods that export both. With `servers` (the spec's
    names; pods may still report one that was removed, which does not count), a server is up
    when every pod that has contacted it finds it up: a caller may land on any pod, so one pod
    that cannot reach the server fails some callers. Its tools are the most any pod holds, so
    a pod that has not fetched its list yet hides none of them.
    """
    if not pages:
        return {}
    fields: dict[str, Any] = {}
    lookups = sum(page.lookups for page in pages)
    if lookups:
        fields["hitRatio"] = round(sum(page.hits for page in pages) / lookups, 3)
    rated = [p for p in pages if p.saved is not None and p.started is not None]
    if now is not None and rated:
        fields["callsSavedPerHour"] = round(sum(calls_per_hour(p, now) for p in rated))
    if servers is not None:
        ready = sum(server_up(pages, server) for server in servers)
        fields["servers"] = f"{ready}/{len(servers)}"
        fields["tools"] = sum(max(p.tools.get(server, 0) for p in pages) for server in servers)
    return fields


def calls_per_hour(page: Page, now: float) -> float:
    saved, started = page.saved or 0.0, page.started or now
    return saved * 3600 / max(now - started, MIN_UPTIME_SECONDS)


def server_up(pages: Sequence[Page], server: str) -> bool:
    """Whether some pod has contacted the server and none finds it down."""
    views = [page.up[server] for page in pages if server in page.up]
    return bool(views) and all(views)


def pod_urls(pods: Iterable[Mapping[str, Any]]) -> list[str]:
    """The `/metrics` URLs of the pods that are Ready and have an IP."""
    urls = []
    for pod in pods:
        status = pod.get("status", {})
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions", [])
        )
        if ready and status.get("podIP") and not pod["metadata"].get("deletionTimestamp"):
            urls.append(f"http://{status['podIP']}:{proxyconfig.PORT}/metrics")
    return urls


async def read(session: aiohttp.ClientSession, url: str, caches: Collection[str]) -> Page | None:
    """One pod's page, or None when it does not answer in time or answers no exposition."""
    try:
        async with session.get(url) as reply:
            reply.raise_for_status()
            page = parse(await bounded_text(reply), caches)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        metrics.status_scrapes.labels("failed").inc()
        return None
    metrics.status_scrapes.labels("ok").inc()
    return page


async def bounded_text(reply: aiohttp.ClientResponse) -> str:
    """The body as text (an exposition is UTF-8); ValueError past `MAX_PAGE_BYTES`."""
    body = bytearray()
    async for chunk in reply.content.iter_any():
        body += chunk
        if len(body) > MAX_PAGE_BYTES:
            raise ValueError(f"a /metrics page over {MAX_PAGE_BYTES} bytes")
    return body.decode(errors="replace")


async def scrape(
    session: aiohttp.ClientSession, urls: Iterable[str], caches: Collection[str]
) -> list[Page]:
    """Every page that could be read, fetched in parallel."""
    pages = await asyncio.gather(*(read(session, url, caches) for url in urls))
    return [page for page in pages if page is not None]


def index_entry(body: Mapping[str, Any]) -> dict[Key, Known]:
    """What the policy indexes hold: each policy, with its status fields and servers."""
    meta = body["metadata"]
    key = (body["kind"], meta["namespace"], meta["name"])
    status = body.get("status") or {}
    named = (body.get("spec") or {}).get("servers")
    servers = None if named is None else tuple(server["name"] for server in named)
    return {key: Known({field: status.get(field) for field in FIELDS}, servers)}


async def refresh(
    client: kube.Client, session: aiohttp.ClientSession, key: Key, known: Known
) -> None:
    """Scrape one policy's ready pods and write the fields that differ from its status."""
    kind, namespace, name = key
    selector = resources.label_selector(kind, name)
    pods = await client.list(kube.path("v1", "Pod", namespace), selector)
    pages = await scrape(session, pod_urls(pods), policies.KINDS[kind].caches)
    fields = combine(pages, known.servers, time.time())
    if changed := {f: value for f, value in fields.items() if known.shown.get(f) != value}:
        url_path = kube.path(policies.API_VERSION, kind, namespace, name)
        await client.patch_status(url_path, changed)


async def refresh_forever(
    client: kube.Client,
    session: aiohttp.ClientSession,
    known: Callable[[], Iterable[tuple[Key, Known]]],
    interval: float,
) -> None:
    """Every `interval` seconds, refresh every policy `known()` lists, a few at a time."""
    limit = asyncio.Semaphore(CONCURRENT_POLICIES)

    async def one(key: Key, policy: Known) -> None:
        async with limit:
            try:
                await refresh(client, session, key, policy)
            except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
                log.debug("status of %s/%s/%s not refreshed from its pods: %s", *key, error)

    while True:
        await asyncio.sleep(interval)
        await asyncio.gather(*(one(key, policy) for key, policy in known()))
