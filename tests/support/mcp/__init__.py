"""MCP servers for the gateway's tests: the official SDK's MCPServer, raw ASGI, and third parties.

Each runs as a subprocess on a free loopback port (``python -m tests.support.mcp KIND``, see
:mod:`.cli`) and counts every JSON-RPC method that reaches it (``/control/calls``,
:mod:`.control`), so tests assert what really arrived upstream. The kinds, one module each:

* :mod:`.normal`: tools, prompts and resources; sessions that can be forgotten (:mod:`.sessions`);
* :mod:`.slow`: tools/list held back; :mod:`.failing`: tools/list errors or HTTP 500s;
* :mod:`.changing`: the tool list changes on demand, with ``notifications/tools/list_changed``;
* :mod:`.hostile`: 50,000 tools, 20 MB lists, streams that never end, endless pages;
* :mod:`.fastserver`: built with fastmcp; :mod:`.bridge`: mcp-server-time behind mcp-proxy,
  counted by :mod:`.relay`.

The pytest fixtures (:mod:`.plugin`) are re-exported here: enable them with
``pytest_plugins = ["tests.support.mcp"]``.
"""

from tests.support.mcp.plugin import (
    McpServers,
    mcp_changing,
    mcp_changing_handshake,
    mcp_failing,
    mcp_fast,
    mcp_hostile,
    mcp_normal,
    mcp_servers,
    mcp_slow,
    mcp_stateless,
    mcp_time,
)
from tests.support.mcp.process import BridgedServer, McpServer

__all__ = [
    "BridgedServer",
    "McpServer",
    "McpServers",
    "mcp_changing",
    "mcp_changing_handshake",
    "mcp_failing",
    "mcp_fast",
    "mcp_hostile",
    "mcp_normal",
    "mcp_servers",
    "mcp_slow",
    "mcp_stateless",
    "mcp_time",
]
