"""The two measured choices of DESIGN.md §4, re-checked: the upstream client and the server.

    python -m bench.stack [--requests 3000]

1. Upstream client inside a minimal pass-through proxy (uvicorn, plain ASGI), 32 clients,
   simulator answering after 20 ms: aiohttp vs httpx vs httpx over the aiohttp transport.
2. Serving side, cache hits from a dict, 32 connections from wrk on the other core:
   uvicorn (uvloop + httptools) with a plain ASGI callable vs aiohttp's web server.

Each variant runs in its own process; this file is also that process (`serve-*` commands).
Needs the bench extra (`pip install -e '.[bench]'`) and wrk (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from typing import Any

import orjson

from bench import common

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
HIT = orjson.dumps({"id": "cached", "choices": [{"message": {"content": "from the dict"}}]})


# --- the variants, each run as `python -m bench.stack serve-... PORT [UPSTREAM]` --------------


def pass_through_app(client: str, upstream: str) -> Any:
    """A pass-through ASGI app whose only moving part is the upstream client."""
    state: dict[str, Any] = {}

    async def send_upstream(body: bytes) -> tuple[int, bytes]:
        if client == "aiohttp":
            import aiohttp

            if "session" not in state:
                state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
            async with state["session"].post(upstream, data=body) as answer:
                return answer.status, await answer.read()
        import httpx

        if "client" not in state:
            transport = None
            if client == "httpx-aiohttp":
                import httpx_aiohttp

                transport = httpx_aiohttp.AiohttpTransport()
            state["client"] = httpx.AsyncClient(
                transport=transport, limits=httpx.Limits(max_connections=100)
            )
        answer = await state["client"].post(upstream, content=body)
        return answer.status_code, answer.content

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status, answer = await send_upstream(body)
        await respond(send, status, answer)

    return app


async def respond(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def hit_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The floor of serving a cache hit: a dict lookup and two sends."""
    if scope["type"] == "http":
        await respond(send, 200, HIT)


def serve(command: str, port: int, upstream: str) -> None:
    if command == "serve-aiohttp-server":
        from aiohttp import web

        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=HIT, content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        import uvloop

        uvloop.install()
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
        return
    import uvicorn

    asgi = hit_app if command == "serve-hits" else pass_through_app(command[6:], upstream)
    uvicorn.run(
        asgi,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


# --- the driver -----------------------------------------------------------------------------


def start(command: str, upstream: str = "", cpu: str | None = None) -> tuple[Any, str]:
    port = common.free_port()
    argv = [sys.executable, "-m", "bench.stack", command, str(port), upstream]
    url = f"http://127.0.0.1:{port}"
    return common.spawn(argv, url + "/", cpu), url


def upstream_clients(requests: int) -> str:
    rows = [["upstream client in the proxy", "req/s", "proxy CPU/req ms"]]
    with common.simulator("--latency-ms", "20", "--call-log-limit", "0") as sim:
        direct = asyncio.run(common.load(sim + "/chat/completions", [BODY], 32, requests))
        rows.append(["(none: direct to the simulator)", f"{direct.rate:.0f}", ""])
        for client in ("aiohttp", "httpx", "httpx-aiohttp"):
            process, url = start(f"serve-{client}", sim + "/chat/completions")
            try:
                asyncio.run(common.load(url, [BODY], 32, 200))
                before = common.cpu_seconds(process.pid)
                result = asyncio.run(common.load(url, [BODY], 32, requests))
                cpu = (common.cpu_seconds(process.pid) - before) / result.requests * 1000
            finally:
                common.stop(process)
            rows.append([client, f"{result.rate:.0f}", f"{cpu:.3f}"])
    return common.table(rows)


def servers(seconds: int) -> str:
    if shutil.which("wrk") is None:
        return "servers: skipped, wrk is not installed (apt-get install wrk)"
    rows = [["server", "hits/s"]]
    for name, command in (
        ("uvicorn + plain ASGI", "serve-hits"),
        ("aiohttp web server", "serve-aiohttp-server"),
    ):
        process, url = start(command, cpu="0")
        try:
            out = subprocess.run(
                ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", url + "/"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            common.stop(process)
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        rows.append([name, found.group(1) if found else "?"])
    return common.table(rows)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1].startswith("serve-"):
        serve(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    print(upstream_clients(args.requests))
    print()
    print(servers(args.seconds))


if __name__ == "__main__":
    main()
