"""Test-wide plugins: simulator, proxy subprocesses, redis-server, control plane, MCP servers,
the built image."""

from __future__ import annotations

from collections.abc import Generator

import pytest

pytest_plugins = [
    "tests.support.simulator",
    "tests.support.proxy",
    "tests.support.redis",
    "tests.support.controlplane",
    "tests.support.redistopologies",  # after controlplane, whose free_ports it uses
    "tests.support.toolservers",
    "tests.support.mcp",
    "tests.support.image",
]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item, so fixtures can print logs for failures."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
