"""The gateway's own rules that need no server: what it sends upstream on its own account."""

from __future__ import annotations

from sluice.api import MCPServerConfig
from sluice.proxy.mcp import gateway


def test_configured_headers_come_from_the_prefix_with_dashes_for_underscores() -> None:
    env = {"S_Authorization": "Bearer proxy-own", "S_X_Team": "tools", "OTHER": "x"}
    server = MCPServerConfig(name="s", url="http://x/mcp", headers_env_prefix="S_")
    assert gateway.configured_headers(server, env) == {
        "authorization": "Bearer proxy-own",
        "x-team": "tools",
    }


def test_a_forwarding_server_never_gets_a_configured_authorization() -> None:
    env = {"S_Authorization": "Bearer proxy-own", "S_X_Team": "tools"}
    server = MCPServerConfig(
        name="s", url="http://x/mcp", headers_env_prefix="S_", forward_caller_auth=True
    )
    assert gateway.configured_headers(server, env) == {"x-team": "tools"}


def test_a_result_keeps_its_own_result_type() -> None:
    assert gateway.finished({"a": 1}, modern=True) == {"a": 1, "resultType": "complete"}
    waiting = {"resultType": "input_required"}
    assert gateway.finished(waiting, modern=True) == waiting
    assert gateway.finished({"a": 1}, modern=False) == {"a": 1}
