"""Running a :class:`.server.Simulator` on its own event loop in a background thread.

For sync tests, for async tests on another loop, and for proxies in subprocesses, which all need
a server that keeps answering while the caller blocks. The pytest fixtures in :mod:`.plugin`
keep one :class:`SimulatorThread` per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from tests.support.simulator import server, state


class SimulatorThread:
    """Runs a :class:`Simulator` on its own event loop in a daemon thread.

    ``with SimulatorThread(latency_ms=5) as sim:`` yields the :class:`Simulator`, whose control
    methods are thread-safe; the server is stopped when the block ends.
    """

    def __init__(
        self,
        config: state.SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **overrides: Any,
    ) -> None:
        self.sim = server.Simulator(config, **overrides)
        self._host = host
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.sim.url

    def start(self, timeout: float = 10.0) -> str:
        """Start serving; blocks until the port is bound and returns the base URL."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="sluice-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("simulator did not start in time")
        if self._error is not None:
            raise RuntimeError("simulator failed to start") from self._error
        return self.sim.url

    def stop(self, timeout: float = 10.0) -> None:
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is None or stopping is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.sim.start(self._host, self._port)
        except BaseException as exc:  # reported to start() in the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.sim.stop()

    def __enter__(self) -> server.Simulator:
        self.start()
        return self.sim

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __getattr__(self, name: str) -> Any:
        # Convenience: thread.fail_next(...), thread.stats, ... reach the simulator. Only called
        # for missing attributes; the guard avoids recursion if __init__ failed before self.sim.
        if name == "sim":
            raise AttributeError(name)
        return getattr(self.sim, name)
