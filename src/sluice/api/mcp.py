"""Settings for a set of MCP servers behind one aggregating, caching endpoint (no secrets here).

`ToolCachePolicy.spec` and the proxy config's `mcp` section differ only in how a server's
secret headers are named (a Secret in the CRD, environment variables in the config), so the rest
is defined once here and both sides subclass it.
"""

from __future__ import annotations

from pydantic import Field

from sluice.api.base import DNS_LABEL, Model


class MCPServerSettings(Model):
    """One upstream MCP server."""

    name: str = Field(pattern=f"^{DNS_LABEL}$", max_length=63)
    """Short name, used to qualify its tools as `<name>.<tool>`."""
    url: str = Field(pattern=r"^https?://", max_length=2048)
    """Its Streamable HTTP endpoint."""


class ToolResultRule(Model):
    """Result caching for the tools whose qualified name matches a glob."""

    tool: str = Field(min_length=1, max_length=256)
    """Glob over `<server>.<tool>` names, for example `github.search_*`."""
    ttl_seconds: int = Field(default=60, ge=1, le=31536000)
    """Seconds a result of a matching tool stays cached."""


class MCPSettings(Model):
    """How tool lists and tool results are cached."""

    tools_list_ttl_seconds: int = Field(default=300, ge=0, le=31536000)
    """Seconds each server's tools/list stays cached; 0 disables it."""
    invalidate_on_list_changed: bool = True
    """Drop a server's cached list when it sends `notifications/tools/list_changed`."""
    tool_results: list[ToolResultRule] = Field(default_factory=list, max_length=256)
    """Tools whose results are cached; only read-only tools belong here."""
