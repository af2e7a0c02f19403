"""What the integration tests' real peers (`redis-server`, `prometheus`, the proxy) share: finding
their binary, waiting for a process just started to answer, and stopping it.

Where a binary is missing the tests that need it are skipped with a message, except in CI (`CI`
set), where that is a broken install step and fails them (`hack/setup.sh --tests` installs all).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable

import pytest


def binary(name: str, package: str) -> str:
    """The path of `name`; skips (fails in CI) when it is not installed."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (Debian: apt-get install -y {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def wait_started(
    what: str,
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    log: Callable[[], str],
    *,
    timeout: float,
    interval: float,
) -> None:
    """Poll `ready()` until it is true; RuntimeError naming `what`, with the `log()`, when the
    process exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{log()}")
        time.sleep(interval)


def stop(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM, and SIGKILL after `timeout`, unless the process is gone already."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
