"""fastmcp's multi-server proxy, the peer of bench.mcp: run with the interpreter of fastmcp's own
venv (bench.mcp makes it), so only the standard library and fastmcp are imported here.

    <fastmcp venv>/bin/python -m bench.fastmcp_proxy PORT URL [URL ...]

`create_proxy` over an `MCPConfig` naming each URL `s0`, `s1`, ..., served over Streamable HTTP
at `http://127.0.0.1:PORT/mcp`, as fastmcp's documentation sets up a gateway to several servers.
"""

from __future__ import annotations

import logging
import sys

from fastmcp.mcp_config import MCPConfig
from fastmcp.server import create_proxy


def main() -> None:
    port, urls = int(sys.argv[1]), sys.argv[2:]
    servers = {f"s{i}": {"url": url, "transport": "http"} for i, url in enumerate(urls)}
    proxy = create_proxy(MCPConfig.from_dict({"mcpServers": servers}), name="fastmcp-bench")
    # Quiet, so the pipe bench.common keeps for stderr never fills and blocks the server.
    logging.getLogger().setLevel(logging.WARNING)
    proxy.run(transport="http", host="127.0.0.1", port=port, show_banner=False, log_level="warning")


if __name__ == "__main__":
    main()
