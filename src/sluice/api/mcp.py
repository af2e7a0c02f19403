"""Settings for a set of MCP servers behind one aggregating, caching endpoint (no secrets here).

`ToolCachePolicy.spec` and the proxy config's `mcp` section differ only in how a server's
secret headers are named (a Secret in the CRD, environment variables in the config), so the rest
is defined once here and both sides subclass it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from sluice.api.base import DNS_LABEL, HTTP_URL, Model
from sluice.api.store import StoreSettings


class MCPServerSettings(Model):
    """One upstream MCP server."""

    name: str = Field(pattern=f"^{DNS_LABEL}$", max_length=63)
    """Short name, used to qualify its tools as `<name>.<tool>`."""
    url: str = Field(pattern=HTTP_URL, max_length=2048)
    """Its Streamable HTTP endpoint."""
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    """Time allowed for one request to this server (a page of a list, a tool call); a server
    that takes longer is left out of that list answer, which serves its last good list."""
    forward_caller_auth: bool = False
    """Send the caller's own `Authorization` to this server. Only for a server that is the
    audience of the callers' tokens: the MCP spec forbids passing a token to any other. When
    false the caller's token never leaves the proxy, and the server gets its configured headers."""


class ToolResultRule(Model):
    """Result caching for the tools whose qualified name matches a glob."""

    tool: str = Field(min_length=1, max_length=256)
    """Glob over `<server>.<tool>` names, for example `github.search_*`."""
    ttl_seconds: int = Field(default=60, ge=1, le=31536000)
    """Seconds a result of a matching tool stays cached."""


class ToolCacheSettings(StoreSettings):
    """Where tool lists and results are cached; with `redis` or `tiered`, every replica shares
    the lists, and a server's `list_changed` heard by one replica reaches them all."""


class MCPLimits(Model):
    """Bounds on what callers and upstream servers may send, so no peer can exhaust the proxy."""

    max_request_bytes: int = Field(default=4194304, ge=1024, le=1073741824)
    """Largest JSON-RPC request body a caller may send; larger ones get 413."""
    max_response_bytes: int = Field(default=16777216, ge=1024, le=1073741824)
    """Largest answer read from an upstream server (one list page, one tool result)."""
    max_list_pages: int = Field(default=32, ge=1, le=10000)
    """Pages of one server's list followed through `nextCursor`."""
    max_list_items: int = Field(default=4096, ge=1, le=1000000)
    """Tools (or prompts, resources) one server may list; a longer list is refused as hostile."""


class MCPSettings(Model):
    """How tool lists and tool results are cached, and the bounds on every peer."""

    tools_list_ttl_seconds: int = Field(default=300, ge=0, le=31536000)
    """Seconds each server's tools/list (and prompts/list, resources/list) stays cached; a
    server's own `ttlMs` can shorten it, never lengthen it; 0 disables list caching."""
    invalidate_on_list_changed: bool = True
    """Drop a server's cached lists when it sends `notifications/*/list_changed`."""
    tool_results: list[ToolResultRule] = Field(default_factory=list, max_length=256)
    """Tools whose results are cached; only read-only tools belong here."""
    allowed_origins: list[str] = Field(default_factory=list, max_length=64)
    """Browser origins (`https://app.example.com`) allowed to call `/mcp`; a request with any
    other `Origin` gets 403 (the transport's DNS-rebinding rule). Clients that are not browsers
    send no `Origin` and are not affected."""
    limits: MCPLimits = Field(default_factory=MCPLimits)
    """Bounds on requests, answers and lists."""


def check_unique_servers(servers: Sequence[MCPServerSettings]) -> None:
    """Server names qualify tool names, so two servers of one name would be one server."""
    names = [server.name for server in servers]
    if len(names) != len(set(names)):
        raise ValueError("server names must be unique")
