"""The simulator's pytest fixtures: ``simulator_thread`` per session, ``simulator`` per test.

The package ``tests.support.simulator`` re-exports both, so ``pytest_plugins =
["tests.support.simulator"]`` (as in ``tests/conftest.py``) finds them there; this module is not
registered on its own. One :class:`.runner.SimulatorThread` serves the whole session, so
session-scoped proxies can point at a stable URL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.simulator import runner, server


@pytest.fixture(scope="session")
def simulator_thread() -> Iterator[runner.SimulatorThread]:
    """One simulator for the whole session, on a stable URL (for session-scoped proxies)."""
    thread = runner.SimulatorThread()
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def simulator(simulator_thread: runner.SimulatorThread) -> Iterator[server.Simulator]:
    """The session's simulator with fresh state: default config, no calls, no faults."""
    simulator_thread.sim.reset()
    yield simulator_thread.sim
    simulator_thread.sim.reset()  # do not leak faults a test queued but never triggered
