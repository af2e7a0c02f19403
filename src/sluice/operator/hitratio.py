"""The cache hit ratio of a policy's proxies, read from their own `/metrics`, for its status.

`kubectl get lbp` shows it; Prometheus and the chart's dashboard remain the place for its
history. The ratio is hits over look-ups (`sluice_cache_requests_total` with `result` other
than `bypass`, which was no look-up), summed over the ready pods, since they started. Parsing
and choosing pods are pure; `scrape()`, `refresh()` and `refresh_forever()` do the I/O. A pod
that cannot be reached (a NetworkPolicy, a pod going away) is left out; with none left the
ratio stays as it was.

One loop for all policies, fed by kopf indexes of the policies (`handlers`), rather than a
kopf timer per policy: kopf puts a finalizer on every object with a timer, and a finalizer
left behind by an uninstalled operator blocks the deletion of every policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from sluice.api import policies
from sluice.operator import kube, metrics, proxyconfig, resources

Key = tuple[str, str, str]  # kind, namespace, name
CONCURRENT_POLICIES = 8
log = logging.getLogger(__name__)

# Matched by sample name: the family name loses `_total` only when a TYPE line says counter.
SAMPLE = "sluice_cache_requests_total"
NOT_A_LOOKUP = "bypass"


def counts(exposition: str) -> tuple[float, float]:
    """(hits, look-ups) in one `/metrics` page."""
    hits = lookups = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name != SAMPLE:
                continue
            result = sample.labels.get("result")
            if result != NOT_A_LOOKUP:
                lookups += sample.value
                hits += sample.value if result == "hit" else 0.0
    return hits, lookups


def ratio(pages: Iterable[str]) -> float | None:
    """The hit ratio over several pods' pages, to three places; None before any look-up."""
    totals = [counts(page) for page in pages]
    hits, lookups = sum(t[0] for t in totals), sum(t[1] for t in totals)
    return round(hits / lookups, 3) if lookups else None


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


async def fetch(session: aiohttp.ClientSession, url: str) -> str | None:
    """One page, or None when the pod does not answer in time."""
    try:
        async with session.get(url) as reply:
            reply.raise_for_status()
            text = await reply.text()
    except (aiohttp.ClientError, TimeoutError):
        metrics.hit_ratio_scrapes.labels("failed").inc()
        return None
    metrics.hit_ratio_scrapes.labels("ok").inc()
    return text


async def scrape(session: aiohttp.ClientSession, urls: Iterable[str]) -> float | None:
    """The hit ratio over every page that could be read, fetched in parallel."""
    pages = await asyncio.gather(*(fetch(session, url) for url in urls))
    return ratio(page for page in pages if page is not None)


def index_entry(body: Mapping[str, Any]) -> dict[Key, float | None]:
    """What the policy indexes hold: each policy, with the hit ratio its status shows."""
    meta = body["metadata"]
    key = (body["kind"], meta["namespace"], meta["name"])
    return {key: (body.get("status") or {}).get("hitRatio")}


async def refresh(
    client: kube.Client, session: aiohttp.ClientSession, key: Key, shown: float | None
) -> None:
    """Scrape one policy's ready pods and write the ratio when it differs from the status."""
    kind, namespace, name = key
    selector = resources.label_selector(kind, name)
    pods = await client.list(kube.path("v1", "Pod", namespace), selector)
    value = await scrape(session, pod_urls(pods))
    if value is not None and value != shown:
        url_path = kube.path(policies.API_VERSION, kind, namespace, name)
        await client.patch_status(url_path, {"hitRatio": value})


async def refresh_forever(
    client: kube.Client,
    session: aiohttp.ClientSession,
    known: Callable[[], Iterable[tuple[Key, float | None]]],
    interval: float,
) -> None:
    """Every `interval` seconds, refresh every policy `known()` lists, a few at a time."""
    limit = asyncio.Semaphore(CONCURRENT_POLICIES)

    async def one(key: Key, shown: float | None) -> None:
        async with limit:
            try:
                await refresh(client, session, key, shown)
            except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
                log.debug("hit ratio of %s/%s/%s not refreshed: %s", *key, error)

    while True:
        await asyncio.sleep(interval)
        await asyncio.gather(*(one(key, shown) for key, shown in known()))
