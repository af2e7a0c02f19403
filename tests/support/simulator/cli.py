"""The standalone simulator for benches: ``python -m tests.support.simulator --port 9000``.

Serves one :class:`.server.Simulator` until SIGINT or SIGTERM and prints its base URL first, the
line benches (``bench/common.py``) read to learn the port. Settings not on the command line can
still be changed over the ``/_sim`` control API. ``__main__`` calls :func:`main`; it lives here
so that the package can re-export it without importing ``__main__`` (which would make
``python -m`` warn that the module was already imported).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

from tests.support.simulator import server


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.simulator",
        description="OpenAI-compatible upstream simulator (control API under /_sim).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--per-input-latency-ms", type=float, default=0.0)
    parser.add_argument("--stream-chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--dimensions", type=int, default=16, help="default embedding size")
    parser.add_argument("--shuffle", action="store_true", help="shuffle embeddings and completions")
    parser.add_argument("--require-auth", action="store_true")
    parser.add_argument("--api-key", action="append", default=[], help="accepted key (repeatable)")
    parser.add_argument("--call-log-limit", type=int, default=10_000)
    return parser.parse_args(argv)


async def _serve_forever(args: argparse.Namespace) -> None:
    sim = server.Simulator(
        latency_ms=args.latency_ms,
        per_input_latency_ms=args.per_input_latency_ms,
        stream_chunk_delay_ms=args.stream_chunk_delay_ms,
        default_dimensions=args.dimensions,
        shuffle_embeddings=args.shuffle,
        shuffle_completions=args.shuffle,
        require_auth=args.require_auth,
        api_keys=tuple(args.api_key),
        call_log_limit=args.call_log_limit,
    )
    url = await sim.start(args.host, args.port)
    print(url, flush=True)  # benches read this line to learn the port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        import uvloop  # a project dependency; keeps the simulator cheaper than the proxy
    except ImportError:
        asyncio.run(_serve_forever(args))
    else:
        uvloop.run(_serve_forever(args))
    return 0
