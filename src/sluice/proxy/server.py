"""Serving the app with uvicorn (uvloop + httptools), and a graceful SIGTERM.

On SIGTERM the app starts draining: `/readyz` answers 503 and new API requests get a 503 that
SDK clients retry elsewhere, while the listener stays open so both are observable. When the
in-flight requests are done, or shortly before `shutdownGraceSeconds` has passed, uvicorn's own
shutdown runs: stop accepting, close connections, and the app's shutdown (flush batches, close
pools). Requests still in flight at that point are cut by the app (`ProxyApp.cut`: a 503
`shutting_down` in OpenAI's shape) rather than by uvicorn (a plain-text 500, after a second
grace). A second signal skips the wait.

Connections are served by `http.guard`'s protocol: slow or oversized request heads and slow
bodies get a 408 (431) and are closed.

Once started, the collector is tuned (`tune_gc`): measured per 10,000 pass-through requests
(`python -m bench.gcpressure`, docs/benchmarks.md), CPython's full passes over the start-up heap
were ~15% of the proxy's CPU; cache hits make no garbage the collector has to find.
"""

from __future__ import annotations

import gc
import socket
from types import FrameType

import uvicorn

from sluice.api import ProxyConfig
from sluice.proxy import logs
from sluice.proxy.app import ProxyApp
from sluice.proxy.http import guard

CUT_SECONDS = 1.0
"""Of the shutdown grace, the end kept for answering what is still in flight (at most a quarter)."""
GC_THRESHOLDS = (10_000, 20, 20)
"""CPython's default is (700, 10, 10): a young collection every 700 net allocations, which a
burst of concurrent requests reaches without making any garbage that needs the collector."""


def tune_gc() -> None:
    """Freeze what start-up made (modules, config, pools: alive as long as the process), so full
    collections stop walking it, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app to drain before its own shutdown begins."""

    def __init__(self, config: uvicorn.Config, app: ProxyApp) -> None:
        super().__init__(config)
        self.proxy_app = app

        self.draining = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the app's lifespan startup is done when this returns
        tune_gc()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self.proxy_app.loop
        if self.draining or loop is None:
            super().handle_exit(sig, frame)
            return
        self.draining = True
        # Called from a signal handler: hand the work to the loop rather than touch it here.
        loop.call_soon_threadsafe(lambda: loop.create_task(self.drain()))

    async def drain(self) -> None:
        app = self.proxy_app
        app.begin_drain()
        grace = app.config.listen.shutdown_grace_seconds
        cut = min(CUT_SECONDS, grace / 4)
        await app.wait_idle(grace - cut)
        if app.in_flight:
            app.cut()
            await app.wait_idle(cut)
        self.should_exit = True


def serve(
    config: ProxyConfig, log_level: str = "info", log_format: str = "text", access_log: bool = True
) -> None:
    """Run the proxy until SIGTERM or SIGINT."""
    logs.configure(log_level, log_format)
    app = ProxyApp(config, access_log=logs.AccessLog(log_format) if access_log else None)
    listen = config.listen
    limits = guard.Limits(
        listen.header_timeout_seconds, listen.body_timeout_seconds, listen.max_header_bytes
    )
    uv_config = uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        loop="uvloop",
        http=guard.protocol(limits),
        lifespan="on",
        access_log=False,
        server_header=False,
        # The proxy never reads the client's address or scheme, and uvicorn's middleware that
        # rewrites them from X-Forwarded-* parses the peer's IP address on every request.
        proxy_headers=False,
        log_level=log_level,
        log_config=None,  # keep `logs.configure`'s handler (JSON or text) for uvicorn's records
        # What is left in flight when uvicorn shuts down was cut and answered by `drain`.
        timeout_graceful_shutdown=1,
    )
    DrainingServer(uv_config, app).run()
