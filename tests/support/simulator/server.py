"""The :class:`Simulator`: the aiohttp app, its lifecycle, and its control from tests.

It owns a :class:`.state.State` and routes every ``/v1`` path through :func:`.pipeline.serve`
to a handler in :mod:`.endpoints`. Tests control it in-process through its thread-safe methods
(``configure``, ``fail_next``, ``stats`` ...), or from another process over the equivalent HTTP
control API under ``/_sim``. :mod:`.runner` runs it on a background thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from tests.support.simulator import batches, endpoints, pipeline, protocol, state


class Simulator:
    """The OpenAI-compatible server plus its control API.

    ``start``/``stop`` must run on the loop that serves it; every other method is thread-safe and
    synchronous, so tests on another thread (see :class:`SimulatorThread`) may call them directly.
    """

    def __init__(self, config: state.SimConfig | None = None, **overrides: Any) -> None:
        base = config or state.SimConfig()
        self._state = state.State(base.replace(**overrides) if overrides else base)
        self._runner: web.AppRunner | None = None
        self._root: str | None = None
        self.app = self._make_app()

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 picks a free port); returns :attr:`url`."""
        # A short shutdown timeout: handlers parked in a "hang" fault must not delay stop().
        # Handlers are cancelled when their client hangs up, as a real API server stops work;
        # the call records when (`CallRecord.hung_up_at`).
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]  # the real port when port=0 asked for any free one
        self._runner = runner
        self._root = f"http://{host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def root_url(self) -> str:
        """``http://host:port`` (the control API lives under ``/_sim``)."""
        if self._root is None:
            raise RuntimeError("simulator not started")
        return self._root

    @property
    def url(self) -> str:
        """OpenAI base URL, ending in ``/v1`` (pass as ``base_url`` to the openai client)."""
        return self.root_url + "/v1"

    @property
    def port(self) -> int:
        return int(self.root_url.rsplit(":", 1)[1])

    # ---- control (thread-safe) ------------------------------------------------------------

    @property
    def config(self) -> state.SimConfig:
        return self._state.config

    @property
    def stats(self) -> state.SimStats:
        return self._state.snapshot()

    @property
    def calls(self) -> list[state.CallRecord]:
        return self._state.snapshot().calls

    def calls_for(self, endpoint: str) -> list[state.CallRecord]:
        return self._state.snapshot().calls_for(endpoint)

    def configure(self, **changes: Any) -> state.SimConfig:
        """Change settings (see :class:`SimConfig`); returns the new config."""
        return self._state.configure(changes)

    def reset(self, *, keep_config: bool = False) -> None:
        """Clear counters, the call log and queued faults; restore the initial config."""
        self._state.reset(keep_config)

    def add_fault(self, fault: state.Fault) -> None:
        self._state.add_fault(fault)

    def pending_faults(self) -> list[state.Fault]:
        return self._state.pending_faults()

    def fail_next(
        self,
        status: int = 500,
        *,
        count: int = 1,
        endpoint: str = "any",
        retry_after: float | str | None = None,
        message: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """The next ``count`` calls to ``endpoint`` answer ``status`` with an OpenAI error body."""
        self.add_fault(
            state.Fault(
                mode="status",
                endpoint=endpoint,
                count=count,
                status=status,
                retry_after=None if retry_after is None else str(retry_after),
                message=message,
                error_type=error_type,
                code=code,
                headers=dict(headers or {}),
            )
        )

    def hang_next(self, seconds: float, *, count: int = 1, endpoint: str = "any") -> None:
        """The next calls sleep ``seconds`` before answering normally (for timeout tests)."""
        self.add_fault(
            state.Fault(mode="hang", endpoint=endpoint, count=count, hang_seconds=seconds)
        )

    def close_next(self, *, count: int = 1, endpoint: str = "any", reset: bool = False) -> None:
        """The next calls get their connection closed (``reset``: with RST) and no answer."""
        mode: state.FaultMode = "reset" if reset else "close"
        self.add_fault(state.Fault(mode=mode, endpoint=endpoint, count=count))

    def cut_stream_next(self, after_chunks: int, *, count: int = 1, endpoint: str = "any") -> None:
        """The next streams stop after ``after_chunks`` SSE events, without ``[DONE]``."""
        self.add_fault(
            state.Fault(mode="cut", endpoint=endpoint, count=count, after_chunks=after_chunks)
        )

    def expire_next_batch(self, after_ms: float = 0.0) -> None:
        """The next Batch API job created expires after ``after_ms`` (items finished by then,
        per ``batch_delay_ms``, are answered; the rest get ``batch_expired`` lines)."""
        with self._state.lock:
            self._state.batch_faults.append(batches.BatchFault("expire", after_ms))

    def fail_next_batch(self) -> None:
        """The next Batch API job created fails validation (status ``failed``, no output)."""
        with self._state.lock:
            self._state.batch_faults.append(batches.BatchFault("fail"))

    def batch_jobs(self) -> list[dict[str, Any]]:
        """Every Batch API job as ``client.batches.retrieve`` last saw it (not advanced)."""
        with self._state.lock:
            return [b.to_dict() for b in self._state.batches.values()]

    # ---- app ------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        # Big embedding batches (2048 inputs) exceed aiohttp's default 1 MiB body limit.
        app = web.Application(client_max_size=256 * 1024 * 1024)

        def route(
            endpoint: str, handler: endpoints.Handler
        ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            async def serve(request: web.Request) -> web.StreamResponse:
                return await pipeline.serve(self._state, request, endpoint, handler)

            return serve

        app.router.add_post("/v1/embeddings", route("embeddings", endpoints.embeddings))
        app.router.add_post("/v1/chat/completions", route("chat", endpoints.chat))
        app.router.add_post("/v1/completions", route("completions", endpoints.completions))
        app.router.add_get("/v1/models", route("models", endpoints.list_models))
        app.router.add_get("/v1/models/{model_id:.+}", route("models", endpoints.get_model))
        app.router.add_get("/v1/files", route("files", batches.list_files))
        app.router.add_post("/v1/files", route("files", batches.upload_file))
        app.router.add_get("/v1/files/{file_id}", route("files", batches.get_file))
        app.router.add_delete("/v1/files/{file_id}", route("files", batches.delete_file))
        app.router.add_get("/v1/files/{file_id}/content", route("files", batches.file_content))
        app.router.add_post("/v1/batches", route("batches", batches.create_batch))
        app.router.add_get("/v1/batches", route("batches", batches.list_batches))
        app.router.add_get("/v1/batches/{batch_id}", route("batches", batches.get_batch))
        app.router.add_post("/v1/batches/{batch_id}/cancel", route("batches", batches.cancel_batch))
        app.router.add_get("/_sim/stats", self._ctl_stats)
        app.router.add_get("/_sim/health", self._ctl_health)
        app.router.add_post("/_sim/reset", self._ctl_reset)
        app.router.add_post("/_sim/configure", self._ctl_configure)
        app.router.add_post("/_sim/fail", self._ctl_fail)
        # Last, so the specific routes win: everything else under /v1 is echoed back.
        app.router.add_route("*", "/v1/{tail:.*}", route("other", endpoints.echo))
        return app

    # ---- control API ----------------------------------------------------------------------

    async def _ctl_health(self, request: web.Request) -> web.StreamResponse:
        return protocol.json_response({"ok": True, "url": self.url})

    async def _ctl_stats(self, request: web.Request) -> web.StreamResponse:
        include_calls = request.query.get("calls", "1") not in ("0", "false", "no")
        payload = self.stats.to_dict(include_calls=include_calls)
        payload["config"] = self.config.to_dict()
        payload["pending_faults"] = [f.to_dict() for f in self.pending_faults()]
        return protocol.json_response(payload)

    async def _ctl_reset(self, request: web.Request) -> web.StreamResponse:
        body = protocol.parse_body(await request.read())
        self.reset(keep_config=isinstance(body, dict) and body.get("keep_config") is True)
        return protocol.json_response({"ok": True, "config": self.config.to_dict()})

    async def _ctl_configure(self, request: web.Request) -> web.StreamResponse:
        body = protocol.parse_body(await request.read())
        if not isinstance(body, dict):
            return protocol.json_response(
                {"error": "expected a JSON object of settings"}, status=400
            )
        try:
            config = self.configure(**body)
        except (TypeError, ValueError) as exc:
            return protocol.json_response({"error": str(exc)}, status=400)
        return protocol.json_response({"ok": True, "config": config.to_dict()})

    async def _ctl_fail(self, request: web.Request) -> web.StreamResponse:
        """Queue one fault (a JSON object of :class:`Fault` fields) or several (a list)."""
        body = protocol.parse_body(await request.read())
        specs = body if isinstance(body, list) else [body]
        try:
            faults = [state.Fault(**spec) for spec in specs if isinstance(spec, dict)]
            if len(faults) != len(specs):
                raise ValueError("expected a JSON object or a list of objects")
        except (TypeError, ValueError) as exc:
            return protocol.json_response({"error": str(exc)}, status=400)
        for fault in faults:
            self.add_fault(fault)
        return protocol.json_response(
            {"ok": True, "pending_faults": [f.to_dict() for f in self.pending_faults()]}
        )
