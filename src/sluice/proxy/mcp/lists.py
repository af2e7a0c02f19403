"""Each upstream server's lists (tools, prompts, resources, templates), cached per server with a
TTL, shared by callers where the server allows it, served stale when the server fails, and kept
fresh in the background while callers use them.

    get(server, kind, caller) -> fresh entry: hit
                              -> stale or none: one fetch per (server, kind, auth context)
                                 (cache.flights), every page through `nextCursor`
                              -> the fetch failed: the stale entry (`stale`), else None

* Keys: `keyspace.layout(prefix, "tools_list", tenant, server, kind)`; the tenant is
  `keyspace.SHARED` for a list every caller may read, the caller's auth context (a hash of its
  `Authorization`, never the token) for a private one: a list fetched with the caller's own
  credentials (`forwardCallerAuth`) or marked `cacheScope: private`. Invalidating a server is one
  `Selection(model=server)`, in memory and in Redis alike, so other replicas see it.
* Values: `{"items", "freshUntil"}` as JSON under `store.pack`, kept past their
  freshness for `STALE_SECONDS` so a server that is down still has its last good list served.
* Freshness: `catalog.freshness` (the policy's TTL, shortened by `ttlMs`); TTL 0 turns caching off.
* Refresh ahead: lists read in the last TTL are fetched again in the background shortly before
  they go stale (`refresh_due`), so after the first cold fan-out no caller waits on one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from sluice.api import MCPConfig
from sluice.proxy import metrics, tasks
from sluice.proxy.cache import flights, keyspace, store
from sluice.proxy.mcp import catalog, connection, jsonrpc

log = logging.getLogger(__name__)

KIND = "tools_list"
"""The cache kind of every list (tools, prompts, resources): `sluice_cache_requests_total`'s
`cache` label and the keys' kind segment."""
STALE_SECONDS = 86400.0
"""How long past its freshness a list is kept, to be served while its server is down."""
REFRESH_SHARE = 0.1
"""A list is refreshed ahead when less than this share of its TTL (and under 5 s) is left."""
RECENT_LIMIT = 4096
"""Lists remembered for refresh ahead; the least recently read go first."""
DECODED_LIMIT = 256
"""Decoded lists kept for the warm path (emptied when full: a busy proxy re-decodes a few)."""
RETRY_SECONDS = 5.0
"""After a refresh ahead failed, how long until the next try."""


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, as far as lists are concerned: the auth context and what to send upstream."""

    context: str
    """Hash of the caller's `Authorization` (empty string for none)."""
    authorization: str | None
    """The caller's own `Authorization`, sent only to servers with `forwardCallerAuth`."""


@dataclasses.dataclass(frozen=True, slots=True)
class Listing:
    """One server's list as cached."""

    items: list[catalog.Item]
    fresh_until: float

    def encode(self) -> bytes:
        return orjson.dumps({"items": self.items, "freshUntil": self.fresh_until})

    @classmethod
    def decode(cls, body: bytes) -> Listing:
        data = orjson.loads(body)
        return cls(data["items"], data["freshUntil"])


@dataclasses.dataclass(slots=True)
class Recent:
    """A list a caller read lately, with what it takes to fetch it again."""

    server: str
    kind: catalog.Kind
    caller: Caller
    read_at: float
    fresh_until: float
    margin: float
    """How long before `fresh_until` it is fetched again: a share of its own freshness."""


class Lists:
    """The per-server list cache in front of the upstream connections."""

    def __init__(
        self,
        config: MCPConfig,
        backend: store.Cache,
        connections: Mapping[str, connection.Connection],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = backend
        self.connections = connections
        self.clock = clock
        self.prefix = config.cache.redis.key_prefix
        self.ttl = float(config.tools_list_ttl_seconds)
        self.forwarding = {s.name: s.forward_caller_auth for s in config.servers}
        self.flights: flights.Flights[tuple[str, str, str, int], Listing] = flights.Flights()
        self.recent: collections.OrderedDict[tuple[str, str, str], Recent] = (
            collections.OrderedDict()
        )
        # The last decoded value per key: a warm hit costs a dict look-up, not a JSON parse.
        self._decoded: dict[str, tuple[bytes, Listing]] = {}
        self._private_seen: dict[str, bool] = {}
        self._keys: dict[tuple[str, str, str, bool], list[str]] = {}
        self._generations: dict[str, int] = {}
        """Bumped by `invalidate`: a fetch under way when it came stores nothing."""
        self._counters = {
            result: metrics.cache_requests.labels(KIND, result)
            for result in ("hit", "miss", "stale", "bypass")
        }
        self._refresher: asyncio.Task[None] | None = None
        self._refreshing: set[asyncio.Task[None]] = set()

    # --- reading ------------------------------------------------------------------------------

    async def get_all(
        self, servers: Sequence[str], kind: catalog.Kind, caller: Caller
    ) -> list[list[catalog.Item] | None]:
        """Each server's list for this caller (None for a server down with nothing cached).

        One `get_many` for every server's likelier key, one more for the others' second key,
        then the misses fetched in parallel: a warm merged list costs one look-up, not one a
        server (with Redis: one round trip, not ten). A warm list is the same object each
        time, which the gateway's merge memo relies on.
        """
        if not self.ttl:
            self._counters["bypass"].inc(len(servers))
            fetches = (self._fetch_or_none(s, kind, caller, None) for s in servers)
            return list(await asyncio.gather(*fetches))
        now = self.clock()
        found: list[list[catalog.Item] | None] = [None] * len(servers)
        stale: list[Listing | None] = [None] * len(servers)
        keys = [self.keys(server, kind, caller) for server in servers]
        pending = list(range(len(servers)))
        for choice in (0, 1):
            asked = [i for i in pending if len(keys[i]) > choice]
            if not asked:
                break
            listings = await self._read_many([keys[i][choice] for i in asked])
            for i, listing in zip(asked, listings, strict=True):
                if listing is None:
                    continue
                if listing.fresh_until > now:
                    found[i] = listing.items
                    self._remember(servers[i], kind, caller, listing, now)
                else:
                    stale[i] = stale[i] or listing
            pending = [i for i in pending if found[i] is None]
        self._counters["hit"].inc(len(servers) - len(pending))
        if pending:
            self._counters["miss"].inc(len(pending))
            fetches = (self._fetch_or_none(servers[i], kind, caller, stale[i]) for i in pending)
            for i, items in zip(pending, await asyncio.gather(*fetches), strict=True):
                found[i] = items
        return found

    def keys(self, server: str, kind: catalog.Kind, caller: Caller) -> list[str]:
        """Where the caller's list may be, the likelier first (remembered: this is per request)."""
        private_first = self._private_seen.get(server, False)
        memo = (server, kind.field, caller.context, private_first)
        known = self._keys.get(memo)
        if known is not None:
            return known
        if len(self._keys) >= RECENT_LIMIT:
            self._keys.clear()
        private = keyspace.layout(self.prefix, KIND, caller.context, server, kind.field)
        if self.forwarding[server]:
            keys = [private]
        else:
            shared = keyspace.layout(self.prefix, KIND, keyspace.SHARED, server, kind.field)
            keys = [private, shared] if private_first else [shared, private]
        self._keys[memo] = keys
        return keys

    async def _read_many(self, keys: list[str]) -> list[Listing | None]:
        try:
            values = await self.store.get_many(keys)
        except store.UnavailableError:
            return [None] * len(keys)  # counted and logged by the backend; servers are asked
        return [self._decode(key, value) for key, value in zip(keys, values, strict=True)]

    def _decode(self, key: str, value: bytes | None) -> Listing | None:
        if value is None:
            return None
        known = self._decoded.get(key)
        if known is not None and known[0] == value:
            return known[1]
        try:
            listing = Listing.decode(store.unpack(value)[2])
        except (ValueError, KeyError, TypeError, struct.error):
            return None  # not a value this gateway wrote (another writer under the prefix)
        if len(self._decoded) >= DECODED_LIMIT:
            self._decoded.clear()
        self._decoded[key] = (value, listing)
        return listing

    async def _fetch_or_none(
        self, server: str, kind: catalog.Kind, caller: Caller, stale: Listing | None
    ) -> list[catalog.Item] | None:
        try:
            listing = await self.refresh(server, kind, caller)
        except (connection.UnavailableError, jsonrpc.RPCError) as e:
            metrics.mcp_upstream_up.labels(server).set(0)  # an answer it could not use counts
            if stale is None:
                log.warning("%s of %s failed and nothing is cached: %s", kind.method, server, e)
                return None
            self._counters["stale"].inc()
            log.warning("%s of %s failed; serving its last good list: %s", kind.method, server, e)
            return stale.items
        self._remember(server, kind, caller, listing, self.clock())
        return listing.items

    # --- fetching -----------------------------------------------------------------------------

    async def refresh(self, server: str, kind: catalog.Kind, caller: Caller) -> Listing:
        """Fetch the list (one flight per server, kind and auth context) and store it."""
        generation = self._generations.get(server, 0)
        flight_key = (server, kind.method, self.tenant(server, caller), generation)
        flight = self.flights.get(flight_key)
        if flight is None:
            work = self._fetch(server, kind, caller, generation)
            flight = self.flights.launch((flight_key,), work)
        return await self.flights.wait(flight)

    def tenant(self, server: str, caller: Caller) -> str:
        """Whose list a fetch gets: the caller's with its own credentials (`forwardCallerAuth`)
        or where the server said private; everyone's otherwise (one fetch, one refresh)."""
        if self.forwarding[server] or self._private_seen.get(server, False):
            return caller.context
        return keyspace.SHARED

    async def _fetch(
        self, server: str, kind: catalog.Kind, caller: Caller, generation: int
    ) -> Listing:
        started = time.perf_counter()
        items, first = await self.fetch_all(server, kind, caller)
        metrics.mcp_list_fetch_duration.labels(server, kind.field).observe(
            time.perf_counter() - started
        )
        if kind is catalog.TOOLS:
            metrics.mcp_tools.labels(server).set(len(items))
        private = self.forwarding[server] or catalog.is_private(first)
        self._private_seen[server] = private
        fresh = catalog.freshness(self.ttl, first)
        listing = Listing(items, self.clock() + fresh)
        if generation != self._generations.get(server, 0):
            return listing  # invalidated while it was on its way: hand it out, keep nothing
        if self.ttl and fresh > 0:
            tenant = caller.context if private else keyspace.SHARED
            key = keyspace.layout(self.prefix, KIND, tenant, server, kind.field)
            value = store.pack(self.clock(), 0, listing.encode())
            with contextlib.suppress(store.UnavailableError):
                await self.store.set(key, value, fresh + STALE_SECONDS)
        return listing

    async def fetch_all(
        self, server: str, kind: catalog.Kind, caller: Caller
    ) -> tuple[list[catalog.Item], dict[str, Any]]:
        """Every page of the list, and the first page's result (for `ttlMs`, `cacheScope`)."""
        limits = self.config.limits
        upstream = self.connections[server]
        headers = self.upstream_headers(server, caller)
        items: list[catalog.Item] = []
        first: dict[str, Any] | None = None
        cursor: str | None = None
        for _ in range(limits.max_list_pages):
            params = {"cursor": cursor} if cursor is not None else {}
            page = await upstream.request(kind.method, params, headers=headers)
            try:
                items += catalog.items_of(kind, page, limits.max_list_items - len(items))
            except ValueError as e:
                raise connection.UnavailableError(str(e)) from None
            first = first or page
            cursor = page.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                return items, first
        raise connection.UnavailableError(
            f"{kind.method} has more than {limits.max_list_pages} pages"
        )

    def upstream_headers(self, server: str, caller: Caller) -> dict[str, str]:
        """The caller's `Authorization`, for a server that is its audience; nothing otherwise
        (the connection adds the server's configured headers)."""
        if self.forwarding[server] and caller.authorization is not None:
            return {"authorization": caller.authorization}
        return {}

    # --- invalidation and refresh ahead -------------------------------------------------------

    async def invalidate(self, server: str | None) -> int:
        """Drop a server's lists (every server's for None), here and in a shared Redis; the
        lists callers read lately are fetched again in the background."""
        selection = keyspace.Selection(kinds=(KIND,), model=server)
        for name in self.forwarding if server is None else (server,):
            self._generations[name] = self._generations.get(name, 0) + 1
        deleted = await self.store.invalidate(selection)
        for key in [k for k in self._decoded if selection.matches(self.prefix, k)]:
            del self._decoded[key]
        for recent in self.recent.values():
            if server is None or recent.server == server:
                recent.fresh_until = 0.0
        return deleted

    def _remember(
        self, server: str, kind: catalog.Kind, caller: Caller, listing: Listing, now: float
    ) -> None:
        key = (server, kind.method, self.tenant(server, caller))
        recent = self.recent.get(key)
        if recent is not None and recent.fresh_until == listing.fresh_until:
            recent.read_at = now  # the warm path: no new object
            self.recent.move_to_end(key)
            return
        margin = min(5.0, REFRESH_SHARE * max(0.0, listing.fresh_until - now))
        self.recent[key] = Recent(server, kind, caller, now, listing.fresh_until, margin)
        self.recent.move_to_end(key)
        while len(self.recent) > RECENT_LIMIT:
            self.recent.popitem(last=False)

    def refresh_due(self, now: float) -> list[Recent]:
        """Lists read within the last TTL whose freshness ends soon (or has ended)."""
        return [
            r
            for r in self.recent.values()
            if now - r.read_at < self.ttl and r.fresh_until - now < r.margin
        ]

    def start(self) -> None:
        if self.ttl:
            loop = asyncio.get_running_loop()
            self._refresher = loop.create_task(self._refresh_forever(), name="sluice-mcp-lists")

    async def close(self) -> None:
        await tasks.cancel(self._refresher)
        self._refresher = None
        for task in list(self._refreshing):
            task.cancel()
        await self.flights.stop()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for due in self.refresh_due(self.clock()):
                due.fresh_until = float("inf")  # not again until this refresh lands
                task = asyncio.get_running_loop().create_task(self._refresh_ahead(due))
                self._refreshing.add(task)
                task.add_done_callback(self._refreshing.discard)

    async def _refresh_ahead(self, due: Recent) -> None:
        generation = self._generations.get(due.server, 0)
        try:
            listing = await self.refresh(due.server, due.kind, due.caller)
        except (connection.UnavailableError, jsonrpc.RPCError) as e:
            due.fresh_until = self.clock() + RETRY_SECONDS - due.margin  # due again then
            log.debug("refresh ahead of %s %s failed: %s", due.server, due.kind.method, e)
            return
        if generation == self._generations.get(due.server, 0):
            due.fresh_until = listing.fresh_until  # else an invalidation came: due at once

    def __repr__(self) -> str:
        return f"<Lists ttl={self.ttl:g}s recent={len(self.recent)} {self.flights!r}>"
