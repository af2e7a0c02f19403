"""The admin API on its own port: `POST /admin/cache/invalidate`, behind an optional bearer token.

A second, tiny ASGI app served by a second uvicorn server on the proxy's event loop, started and
stopped by `app.ProxyApp`'s lifespan. A separate port rather than a token-guarded path on the
API port: the operator's Service exposes only the API port, so the admin API is unreachable from
outside the pod's network unless someone asks for it, and a leaked or unset token alone does
not open it. Closed by default besides:

* It binds `admin.host`; unset, that is `127.0.0.1` outside Kubernetes (a laptop, a VM: nothing
  but the machine itself reaches it) and `listen.host` in a pod (`KUBERNETES_SERVICE_HOST` is
  set), where kubelet probes, port-forwards and the operator's NetworkPolicy decide who comes in.
* Every call needs `Authorization: Bearer` with the value of the variable `admin.tokenEnv`
  names. Without a token configured every call is refused (403): each one deletes cached data,
  and a proxy that generated a token and logged it would put a credential into log pipelines,
  which are read by more people than the Secret the operator keeps it in.

    POST /admin/cache/invalidate  {"scope": "all" | "model" | "tenant", "model": ..., "tenant": ...}
    -> 200 {"deleted": N}
    POST /admin/mcp/invalidate    {"server": NAME} or {} for every server
    -> 200 {"deleted": N}         (the lists callers read lately are fetched again at once)

`tenant` is the tenant as callers present it: the value of `cache.tenantHeader` when one is
configured, otherwise the caller's API key (sent as `Authorization: Bearer` or `api-key`; it is
hashed as `http.callers.Tenants` does and not kept). With `shareAcrossTenants` entries belong
to no tenant, so a tenant scope deletes none. With the tiered backend the count is Redis's, and
other replicas' memory tiers drop their copies within `localTtlSeconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import uvicorn

from sluice.api import Admin, CacheConfig, ConfigError
from sluice.proxy.cache import keyspace, store
from sluice.proxy.http import callers, errors
from sluice.proxy.http.asgi import (
    Receive,
    Reply,
    Request,
    Scope,
    Send,
    error_reply,
    json_reply,
    read_request,
    send_reply,
)
from sluice.proxy.mcp import gateway

log = logging.getLogger(__name__)

INVALIDATE = "/admin/cache/invalidate"
INVALIDATE_MCP = "/admin/mcp/invalidate"
LLM_KINDS = ("chat", "completions", "embeddings")
"""What `/admin/cache/invalidate` deletes: the LLM answers, never the MCP gateway's lists."""
MAX_BODY_BYTES = 65536


class AdminApp:
    """The admin API as an ASGI callable."""

    def __init__(
        self,
        cache: store.Cache | None,
        config: CacheConfig,
        token: str | None,
        mcp: gateway.Gateway | None = None,
    ) -> None:
        self.cache = cache
        self.mcp = mcp
        self.config = config
        self.tenants = callers.Tenants(config.tenant_header)
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            request = await read_request(scope, receive, MAX_BODY_BYTES)
            reply = await self.route(request)
        except errors.ProxyError as e:
            reply = error_reply(e)
        await send_reply(send, reply)

    async def route(self, request: Request) -> Reply:
        self.authorize(request)
        if request.path not in (INVALIDATE, INVALIDATE_MCP):
            raise errors.not_found(request.path)
        if request.method != "POST":
            raise errors.ProxyError(405, f"{request.path} takes POST.", code="method_not_allowed")
        if request.path == INVALIDATE_MCP:
            return await self.invalidate_mcp(request)
        return await self.invalidate(request)

    def authorize(self, request: Request) -> None:
        if self.token is None:
            raise errors.ProxyError(
                403,
                "The admin API is closed: no token is configured (admin.tokenEnv).",
                code="admin_token_unset",
            )
        expected = b"Bearer " + self.token.encode()
        if not hmac.compare_digest(request.header(b"authorization") or b"", expected):
            raise errors.ProxyError(
                401,
                "The admin API needs `Authorization: Bearer <token>`.",
                code="invalid_admin_token",
                headers={"www-authenticate": "Bearer"},
            )

    async def invalidate(self, request: Request) -> Reply:
        selection = self.selection(request.json())
        if self.cache is None:
            return json_reply(200, {"deleted": 0})
        try:
            deleted = await self.cache.invalidate(selection)
        except store.UnavailableError as e:
            raise errors.ProxyError(
                503, f"The cache backend is unavailable: {e}", type="server_error"
            ) from None
        log.info("cache invalidated: %r, %d entries deleted", selection, deleted)
        return json_reply(200, {"deleted": deleted})

    async def invalidate_mcp(self, request: Request) -> Reply:
        body = request.json()
        server = body.get("server")
        known = self.mcp.servers if self.mcp is not None else []
        if server is not None and server not in known:
            raise errors.ProxyError(
                400, f"No MCP server {server!r}; servers: {known}.", param="server"
            )
        if self.mcp is None:
            return json_reply(200, {"deleted": 0})
        try:
            deleted = await self.mcp.lists.invalidate(server)
        except store.UnavailableError as e:
            raise errors.ProxyError(
                503, f"The cache backend is unavailable: {e}", type="server_error"
            ) from None
        log.info("MCP lists invalidated: %s, %d entries deleted", server or "all servers", deleted)
        return json_reply(200, {"deleted": deleted})

    def selection(self, body: dict[str, Any]) -> keyspace.Selection:
        """The entries a request body names (its `scope`), or a 400."""
        scope = body.get("scope")
        model, tenant = body.get("model"), body.get("tenant")
        if scope == "all":
            return keyspace.Selection(kinds=LLM_KINDS)
        if scope == "model" and isinstance(model, str) and model:
            return keyspace.Selection(model=model, kinds=LLM_KINDS)
        if scope == "tenant" and isinstance(tenant, str) and tenant:
            named = model if isinstance(model, str) and model else None
            spelt = self.tenants.spellings(tenant)
            return keyspace.Selection(tenants=spelt, model=named, kinds=LLM_KINDS)
        raise errors.ProxyError(
            400,
            'Expected {"scope": "all"}, {"scope": "model", "model": NAME} or '
            '{"scope": "tenant", "tenant": NAME, "model"?: NAME}.',
            param="scope",
        )

    def __repr__(self) -> str:
        return f"<AdminApp cache={self.cache!r} token={'set' if self.token else 'unset'}>"


class AdminServer(uvicorn.Server):
    """uvicorn for the admin app, leaving the signals to the main server (`server.py`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AdminService:
    """The admin server's lifetime: bound at startup, stopped at shutdown.

    A port that cannot be bound is logged and skipped: the API goes on serving without its
    admin API rather than not at all.
    """

    def __init__(self, app: AdminApp, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.server: AdminServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            sock = _bind(self.host, self.port)
        except OSError as e:
            log.error("admin API not served: cannot bind %s:%d: %s", self.host, self.port, e)
            return
        config = uvicorn.Config(
            self.app, lifespan="off", http="httptools", access_log=False, log_level="warning"
        )
        self.server = AdminServer(config)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self.server.serve(sockets=[sock]), name="sluice-admin")

    async def stop(self) -> None:
        if self.server is None or self._task is None:
            return
        self.server.should_exit = True
        await self._task
        self.server = self._task = None

    def __repr__(self) -> str:
        state = "serving" if self.server is not None else "stopped"
        return f"<AdminService {self.host}:{self.port} {state}>"


def host(config: Admin, listen_host: str, environ: Mapping[str, str]) -> str:
    """Where the admin API binds: `admin.host`, else loopback unless in a Kubernetes pod."""
    if config.host is not None:
        return config.host
    return listen_host if environ.get("KUBERNETES_SERVICE_HOST") else "127.0.0.1"


def token(config: Admin, environ: Mapping[str, str]) -> str | None:
    """The admin token from the environment; a named but unset variable is a config error, so
    a missing secret never leaves the admin API open."""
    if config.token_env is None:
        return None
    value = environ.get(config.token_env)
    if not value:
        raise ConfigError(f"admin.tokenEnv: environment variable {config.token_env} is unset")
    return value


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
