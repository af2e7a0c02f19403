"""The MCP gateway's methods: one MCP server to callers in front of every configured server.

    tools/list, prompts/list, resources/list, resources/templates/list
        every server's list (`lists.Lists`: cached per server, fetched in parallel, stale when a
        server fails), merged per request (`catalog.merge`: tools and prompts named
        `<server>.<name>`); a server that has nothing to give is left out, never failing the rest
    tools/call, prompts/get
        routed by the qualified name to its server, called by its own name; results of the tools
        `toolResults` names are cached (`results.Results`)
    resources/read
        routed to the server whose resources list names the URI
    initialize, server/discover, ping
        answered here; the transport (`transport.py`) does sessions and streams

A server's `notifications/*/list_changed` drops that server's cached lists (when
`invalidateOnListChanged`) and is passed on to every caller listening on this proxy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import metadata
from typing import Any

import orjson

from sluice.api import MCPConfig, MCPServerConfig
from sluice.proxy import metrics
from sluice.proxy.cache import store
from sluice.proxy.http import callers
from sluice.proxy.mcp import catalog, clients, connection, jsonrpc, lists, results
from sluice.proxy.upstream import sessions

log = logging.getLogger(__name__)

MODERN_VERSIONS = (connection.MODERN,)
HANDSHAKE_VERSIONS = connection.HANDSHAKE_VERSIONS
SERVER_INFO = {"name": "sluice", "version": metadata.version("sluice-operator")}
CAPABILITIES = {
    "tools": {"listChanged": True},
    "prompts": {"listChanged": True},
    "resources": {"listChanged": True},
}
TOOL_LABELS_PER_SERVER = 64
"""Distinct tool names per server in `sluice_tool_calls_total`; further ones count as `other`."""
LIST_CHANGED = frozenset(clients.LIST_FILTERS)
ENVELOPE = "io.modelcontextprotocol/"
MERGED_MEMO = 256
"""Merged lists remembered (by auth context, era and kind); emptied when full."""

SendProgress = Callable[[dict[str, Any]], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    """What the transport knows of the request a method answers."""

    modern: bool
    """The stateless 2026-07-28 revision (else a session-based one)."""
    caller: lists.Caller
    progress: SendProgress | None = None
    """Where progress notifications for this request go, when the caller asked for them."""


class Gateway:
    """The methods of `/mcp`, over one connection per upstream server."""

    def __init__(
        self,
        config: MCPConfig,
        backend: store.Cache,
        pool: sessions.SessionPool,
        environ: Mapping[str, str],
    ) -> None:
        self.config = config
        self.pool = pool
        self.servers = [server.name for server in config.servers]
        self.connections: dict[str, connection.Connection] = {
            server.name: connection.HTTPConnection(
                server.name,
                server.url,
                configured_headers(server, environ),
                server.timeout_seconds,
                config.limits.max_response_bytes,
                pool,
                self.notified,
            )
            for server in config.servers
        }
        self.lists = lists.Lists(config, backend, self.connections)
        self.results = results.Results(config, backend)
        self.clients = clients.Clients()
        self._tool_labels: dict[str, set[str]] = {name: set() for name in self.servers}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changing: set[tuple[str, str]] = set()
        self._merged: dict[tuple[Any, ...], tuple[tuple[Any, ...], bytes]] = {}

    async def start(self) -> None:
        await self.pool.start()
        for upstream in self.connections.values():
            await upstream.start()
        self.lists.start()

    async def close(self) -> None:
        self.clients.close()
        for task in list(self._tasks):
            task.cancel()
        await self.lists.close()
        await asyncio.gather(*(upstream.close() for upstream in self.connections.values()))
        await self.pool.close()

    def caller(self, authorization: bytes | None) -> lists.Caller:
        if authorization is None:
            return lists.Caller("", None)
        text = authorization.decode("latin-1")
        return lists.Caller(callers.digest(text), text)

    # --- the methods --------------------------------------------------------------------------

    async def handle(self, message: jsonrpc.Message, context: Context) -> dict[str, Any] | bytes:
        """The result of one request (bytes: already serialized, `finished`), or `RPCError`."""
        method, params = message.method, message.params
        if method in catalog.KINDS:
            return await self.merged(catalog.KINDS[method], context)
        if method == "tools/call":
            return await self.call_tool(params, context)
        if method == "prompts/get":
            server, name = self.route(params.get("name"), "prompt")
            return await self.forward(server, method, {**params, "name": name}, context)
        if method == "resources/read":
            return await self.read_resource(params, context)
        if method in ("ping", "logging/setLevel"):
            return {}
        if method == "server/discover":
            return self.discover()
        raise jsonrpc.RPCError(jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method}")

    def initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        """The handshake's answer: the caller's revision when the gateway speaks it."""
        asked = params.get("protocolVersion")
        version = asked if asked in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[-1]
        return {"protocolVersion": version, "capabilities": CAPABILITIES, "serverInfo": SERVER_INFO}

    def discover(self) -> dict[str, Any]:
        return {
            "supportedVersions": list(MODERN_VERSIONS),
            "capabilities": CAPABILITIES,
            "cacheScope": "public",
            "ttlMs": 0,
        }

    async def merged(self, kind: catalog.Kind, context: Context) -> bytes:
        """Every server's list of `kind`, gathered in parallel, merged for this caller: the
        serialized result, remembered while each server's list is the same object (a warm
        list costs a merge and a serialization once, not per request)."""
        found = await self.lists.get_all(self.servers, kind, context.caller)
        memo = (kind.method, context.modern, tuple(map(id, found)))
        known = self._merged.get(memo)
        if known is not None and all(a is b for a, b in zip(known[0], found, strict=True)):
            return known[1]
        pairs = [(s, items) for s, items in zip(self.servers, found, strict=True) if items]
        items, dropped = catalog.merge(kind, pairs)
        if dropped:
            log.warning("%d %s left out of the merged list: no valid name", dropped, kind.field)
        answer: dict[str, Any] = {kind.field: items}
        if context.modern:
            # Always fresh to the caller: the gateway's own cache is the one that knows when a
            # list changed, and a caller's copy would miss a `list_changed` it never heard.
            answer |= {"ttlMs": 0, "cacheScope": "private"}
        raw = orjson.dumps(finished(answer, context.modern))
        if len(self._merged) >= MERGED_MEMO:
            self._merged.clear()
        self._merged[memo] = (tuple(found), raw)  # holding the lists keeps their ids unique
        return raw

    async def call_tool(self, params: dict[str, Any], context: Context) -> dict[str, Any]:
        qualified = params.get("name")
        server, tool = self.route(qualified, "tool")
        label = self.tool_label(server, tool)
        started = time.perf_counter()
        ttl = self.results.ttl(f"{server}.{tool}") if results.cacheable_call(params) else None
        key = None
        if ttl is not None:
            key = self.results.key(server, tool, params.get("arguments"), context.caller.context)
            cached = await self.results.get(key)
            if cached is not None:
                metrics.tool_calls.labels(server, label, "cached").inc()
                return cached
        try:
            result = await self.forward(server, "tools/call", {**params, "name": tool}, context)
        except jsonrpc.RPCError:
            metrics.tool_calls.labels(server, label, "failed").inc()
            raise
        finally:
            metrics.tool_call_duration.labels(server).observe(time.perf_counter() - started)
        failed = result.get("isError") is True
        metrics.tool_calls.labels(server, label, "error" if failed else "ok").inc()
        if key is not None and ttl is not None and results.complete(result):
            await self.results.put(key, result, ttl, time.time())
        return result

    async def read_resource(self, params: dict[str, Any], context: Context) -> dict[str, Any]:
        uri = params.get("uri")
        if not isinstance(uri, str) or not uri.isprintable():  # it travels in a header too
            raise jsonrpc.RPCError(jsonrpc.INVALID_PARAMS, "resources/read needs a `uri`")
        found = await self.lists.get_all(self.servers, catalog.RESOURCES, context.caller)
        listed = {s: items or [] for s, items in zip(self.servers, found, strict=True)}
        server = catalog.owner_of_uri(uri, listed)
        if server is None:
            raise jsonrpc.RPCError(jsonrpc.RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri})
        return await self.forward(server, "resources/read", params, context)

    def route(self, qualified: Any, what: str) -> tuple[str, str]:
        """(server, name) of a qualified name, or the spec's invalid-params error."""
        # The name rule first: the name is sent on in a header, and merged names all keep it.
        valid = isinstance(qualified, str) and catalog.NAME_RULE.fullmatch(qualified)
        parts = catalog.split(qualified) if valid else None
        if parts is None or parts[0] not in self.connections:
            raise jsonrpc.RPCError(jsonrpc.INVALID_PARAMS, f"Unknown {what}: {qualified}")
        return parts

    async def forward(
        self, server: str, method: str, params: dict[str, Any], context: Context
    ) -> dict[str, Any]:
        """One request to one server, with the caller's progress token mapped both ways."""
        params = dict(params)
        given = params.pop("_meta", None)
        # The caller's envelope (`io.modelcontextprotocol/*`) described its hop, not ours: the
        # connection writes its own, and a handshake-era server refuses a 2026-07-28 one.
        meta = {
            k: v
            for k, v in (given.items() if isinstance(given, dict) else ())
            if not k.startswith(ENVELOPE)
        }
        token = meta.pop("progressToken", None)
        if meta:
            params["_meta"] = meta
        on_progress = None
        if token is not None and context.progress is not None:
            send = context.progress

            async def on_progress(upstream: dict[str, Any]) -> None:
                await send({**upstream, "progressToken": token})

        headers = self.lists.upstream_headers(server, context.caller)
        try:
            return await self.connections[server].request(
                method, params, headers=headers, on_progress=on_progress
            )
        except connection.UnavailableError as e:
            raise jsonrpc.RPCError(
                jsonrpc.INTERNAL_ERROR, f"MCP server {server} is unavailable: {e}"
            ) from None

    def tool_label(self, server: str, tool: str) -> str:
        seen = self._tool_labels[server]
        if tool in seen:
            return tool
        if len(seen) < TOOL_LABELS_PER_SERVER:
            seen.add(tool)
            return tool
        return "other"

    # --- notifications from the servers -------------------------------------------------------

    def notified(self, server: str, method: str, params: dict[str, Any]) -> None:
        if method not in LIST_CHANGED:
            return
        log.info("%s from %s", method, server)
        if not self.config.invalidate_on_list_changed:
            self.clients.broadcast(method)
            return
        if (server, method) in self._changing:
            return  # one invalidation per server and kind at a time: a flood is one change
        self._changing.add((server, method))
        task = asyncio.get_running_loop().create_task(self._changed(server, method))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _changed(self, server: str, method: str) -> None:
        try:
            await self.lists.invalidate(server)
        except store.UnavailableError as e:
            log.warning("%s from %s: cache not invalidated: %s", method, server, e)
        finally:
            self._changing.discard((server, method))
        self.clients.broadcast(method)

    def __repr__(self) -> str:
        return f"<Gateway servers={self.servers} {self.lists!r} {self.clients!r}>"


def finished(result: dict[str, Any], modern: bool) -> dict[str, Any]:
    """The 2026-07-28 revision wants every result to say what it is; one without a
    `resultType` is whole (`input_required` and the like are passed on as they are)."""
    if not modern or "resultType" in result:
        return result
    return {**result, "resultType": "complete"}


def configured_headers(server: MCPServerConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """What the gateway sends a server on its own account. A server that gets the callers'
    own tokens never gets a configured `authorization` too: a caller without a token would
    otherwise be let in with the proxy's."""
    headers = headers_of(server, environ)
    if server.forward_caller_auth:
        headers.pop("authorization", None)
    return headers


def headers_of(server: MCPServerConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The server's configured headers: every environment variable named `<prefix><Header>`,
    underscores read as dashes (`X_Api_Key` sends `X-Api-Key`), since a header name may hold
    a dash and a variable name may not."""
    prefix = server.headers_env_prefix
    if prefix is None:
        return {}
    # Lower-cased, as the connection's own headers are: `Authorization` from here and
    # `authorization` from a forwarding caller must be one header, not two.
    return {
        name[len(prefix) :].replace("_", "-").lower(): value
        for name, value in environ.items()
        if name.startswith(prefix) and len(name) > len(prefix)
    }
