"""The test MCP servers' pytest fixtures: one process per kind per session, fresh counts per test.

``mcp_servers`` (session) starts each server the first time a test asks for it and stops them
all at the end; the per-test fixtures reset a server's counts and state before handing it out:
``mcp_normal`` (sessions), ``mcp_stateless``, ``mcp_slow``, ``mcp_failing``, ``mcp_changing``,
``mcp_hostile``, ``mcp_fast`` (fastmcp) and ``mcp_time`` (mcp-server-time via mcp-proxy).
The package re-exports them, so ``pytest_plugins = ["tests.support.mcp"]`` finds them.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.mcp import bridge, process
from tests.support.proxy import free_port

SERVERS: dict[str, tuple[str, list[str], str]] = {
    "normal": ("normal", ["--name", "normal"], "/mcp"),
    "stateless": ("normal", ["--name", "stateless", "--stateless"], "/mcp"),
    "slow": ("slow", ["--name", "slow", "--list-delay", "1.0"], "/mcp"),
    "failing": ("failing", ["--name", "failing", "--mode", "error"], "/mcp"),
    "changing": ("changing", ["--name", "changing"], "/mcp"),
    "changing-handshake": ("changing", ["--name", "old", "--handshake-only"], "/mcp"),
    "hostile": ("hostile", [], "/many/mcp"),
    "fast": ("fast", ["--name", "fast"], "/mcp"),
}
"""Fixture key -> (kind, arguments, MCP path)."""


class McpServers:
    """The session's test MCP servers, each started on first use."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.running: dict[str, process.McpServer | process.BridgedServer] = {}

    def get(self, key: str) -> process.McpServer:
        if key not in self.running:
            kind, args, path = SERVERS[key]
            self.running[key] = process.McpServer(kind, args, self.workdir, path).start()
        server = self.running[key]
        assert isinstance(server, process.McpServer)
        return server

    def bridge(self) -> process.BridgedServer:
        if "time" not in self.running:
            port = free_port()
            calls_log = self.workdir / f"mcp-server-time-{port}.calls"
            command = bridge.command(port, calls_log)
            self.running["time"] = process.BridgedServer(
                command, port, calls_log, self.workdir
            ).start()
        server = self.running["time"]
        assert isinstance(server, process.BridgedServer)
        return server

    def stop(self) -> None:
        for server in self.running.values():
            server.stop()
        self.running.clear()


@pytest.fixture(scope="session")
def mcp_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServers]:
    servers = McpServers(tmp_path_factory.mktemp("mcp-servers"))
    try:
        yield servers
    finally:
        servers.stop()


def fresh(servers: McpServers, key: str) -> process.McpServer:
    server = servers.get(key)
    server.reset()
    return server


@pytest.fixture
def mcp_normal(mcp_servers: McpServers) -> process.McpServer:
    """MCPServer with sessions: tools add/echo/math.mul/progress/sleep, prompt greet, resources."""
    return fresh(mcp_servers, "normal")


@pytest.fixture
def mcp_stateless(mcp_servers: McpServers) -> process.McpServer:
    """The normal server in stateless_http mode: no sessions, no GET stream."""
    return fresh(mcp_servers, "stateless")


@pytest.fixture
def mcp_slow(mcp_servers: McpServers) -> process.McpServer:
    """tools/list takes 1 s (``control("delay", {"seconds": ...})`` changes it)."""
    return fresh(mcp_servers, "slow")


@pytest.fixture
def mcp_failing(mcp_servers: McpServers) -> process.McpServer:
    """tools/list answers -32603 (``control("mode", {"mode": "http500"|"ok"})`` changes it)."""
    return fresh(mcp_servers, "failing")


@pytest.fixture
def mcp_changing(mcp_servers: McpServers) -> process.McpServer:
    """The tool list changes on ``control("tools", {"add": [...]})`` or the ``grow`` tool."""
    return fresh(mcp_servers, "changing")


@pytest.fixture
def mcp_changing_handshake(mcp_servers: McpServers) -> process.McpServer:
    """The changing server, refusing the 2026-07-28 revision: changes reach sessions on GET."""
    return fresh(mcp_servers, "changing-handshake")


@pytest.fixture
def mcp_hostile(mcp_servers: McpServers) -> process.McpServer:
    """Raw ASGI; ``url`` is the 50,000-tool mode, ``url_for("/huge/mcp")`` etc. the others."""
    return fresh(mcp_servers, "hostile")


@pytest.fixture
def mcp_fast(mcp_servers: McpServers) -> process.McpServer:
    """A fastmcp 4 server: tools echo/add, prompt summarize."""
    return fresh(mcp_servers, "fast")


@pytest.fixture
def mcp_time(mcp_servers: McpServers) -> process.BridgedServer:
    """mcp-server-time behind mcp-proxy 0.13 (mcp 1.x, handshake only), from its own venv."""
    try:
        server = mcp_servers.bridge()
    except (subprocess.SubprocessError, OSError) as error:
        message = f"mcp-proxy {bridge.MCP_PROXY_VERSION} could not be installed or started: {error}"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message)
        pytest.skip(message)
    server.reset()
    return server
