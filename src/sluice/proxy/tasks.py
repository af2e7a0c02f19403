"""Stopping the proxy's own background tasks: one way, used by everything that owns one."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel(task: asyncio.Future[Any] | None) -> None:
    """Cancel `task` unless it has ended, and return once it has."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
