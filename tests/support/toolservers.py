"""Real MCP servers for the gateway's tests: the official SDK's `MCPServer`, in a subprocess.

Each server has tools `add` and `whoami` (which answers the server's name), a prompt `greet` and
a resource `<name>://readme`. A thin ASGI wrapper in front of each lets a test steer and watch it
over `/_control`, without touching the protocol the gateway sees:

    GET  /_control/stats   -> {"tools_list": N, "tools_call": N}   requests that reached it
    GET  /_control/traced  -> {"tools_call": {"traceparent": ...}} the trace headers of each
                                                                   method's last request
    POST /_control/mode    {"delay_ms": N, "fail": bool,           slow it down, make it 500,
                            "forget": bool}                        or 404 the next session request
    POST /_control/change  {"tool": NAME}                          add a tool and publish
                                                                   tools/list_changed

    python -m tests.support.toolservers NAME:PORT[:stateless][:legacy] ...

`legacy` refuses `server/discover` as a server of the session-based revisions does, so clients
fall back to the `initialize` handshake.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import pytest
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.subscriptions import ToolsListChanged

from tests.support.proxy import free_port

Scope = MutableMapping[str, Any]
ASGI = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


def make_server(name: str) -> MCPServer:
    server = MCPServer(name)

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def whoami() -> str:
        """The name of the server that answered."""
        return name

    @server.tool()
    async def slow_count(steps: int, ctx: Context) -> str:
        """Count to `steps`, reporting progress after each."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
            await asyncio.sleep(0.01)
        return f"counted to {steps}"

    @server.tool()
    def fails() -> str:
        """Always an error result."""
        raise ValueError("this tool always fails")

    @server.prompt()
    def greet(who: str) -> str:
        """Say hello."""
        return f"hello {who}, from {name}"

    @server.resource(f"{name}://readme")
    def readme() -> str:
        """This server's readme."""
        return f"readme of {name}"

    return server


@dataclasses.dataclass
class Control:
    """What a test steers and watches of one server."""

    delay_ms: float = 0.0
    fail: bool = False
    forget: bool = False
    legacy: bool = False
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    traced: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    """By method: the request id and trace headers of its last request."""


def steered(server: MCPServer, app: ASGI, control: Control) -> ASGI:
    """`app` behind `/_control`, counting requests by method, slowed or failed on demand."""

    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if scope["path"].startswith("/_control/"):
            await steer(scope, receive, send)
            return
        if scope["method"] != "POST":
            await app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method = json.loads(body or b"{}").get("method", "") if body else ""
        key = method.replace("/", "_")
        control.counts[key] = control.counts.get(key, 0) + 1
        control.traced[key] = {
            name.decode(): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in TRACE_HEADERS
        }
        if control.fail and method != "subscriptions/listen":
            await reply(send, 500, b'{"error":"failing on purpose"}')
            return
        if control.legacy and method == "server/discover":
            await reply(send, 400, LEGACY_REFUSAL)
            return
        has_session = any(name == b"mcp-session-id" for name, _ in scope["headers"])
        if control.forget and has_session:
            control.forget = False
            await reply(send, 404, SESSION_NOT_FOUND)
            return
        if control.delay_ms and method == "tools/list":
            await asyncio.sleep(control.delay_ms / 1000)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await app(scope, replay, send)

    async def steer(scope: Scope, receive: Any, send: Any) -> None:
        message = await receive()
        payload = json.loads(message.get("body") or b"{}")
        if scope["path"] == "/_control/mode":
            control.delay_ms = float(payload.get("delay_ms", control.delay_ms))
            control.fail = bool(payload.get("fail", control.fail))
            control.forget = bool(payload.get("forget", control.forget))
        elif scope["path"] == "/_control/change":
            new = payload["tool"]
            server.add_tool(lambda: new, name=new, description="added by a test")
            await server._subscriptions.publish(ToolsListChanged())
        elif scope["path"] == "/_control/traced":
            await reply(send, 200, json.dumps(control.traced).encode())
            return
        await reply(send, 200, json.dumps(control.counts).encode())

    return wrapped


TRACE_HEADERS = frozenset({b"x-request-id", b"traceparent", b"tracestate"})
LEGACY_REFUSAL = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Bad Request"}}'
SESSION_NOT_FOUND = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Session not found"}}'
)


async def reply(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serve(specs: list[str]) -> None:
    servers = []
    for spec in specs:
        name, port, *flags = spec.split(":")
        server = make_server(name)
        app = server.streamable_http_app(stateless_http="stateless" in flags)
        control = Control(legacy="legacy" in flags)
        config = uvicorn.Config(
            steered(server, app, control), host="127.0.0.1", port=int(port), log_level="warning"
        )
        servers.append(uvicorn.Server(config))
    await asyncio.gather(*(s.serve() for s in servers))


@dataclasses.dataclass
class ToolServer:
    """One running server, from the test's side."""

    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def control(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, int]:
        data = None if payload is None else json.dumps(payload).encode()
        url = f"http://127.0.0.1:{self.port}/_control/{path}"
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as r:
            counts: dict[str, int] = json.loads(r.read())
            return counts

    def traced(self, method: str) -> dict[str, str]:
        """The request id and trace headers of the last `method` request that reached it."""
        url = f"http://127.0.0.1:{self.port}/_control/traced"
        with urllib.request.urlopen(url, timeout=5) as r:
            found: dict[str, dict[str, str]] = json.loads(r.read())
        return found.get(method.replace("/", "_"), {})

    def count(self, method: str) -> int:
        return self.control("stats").get(method.replace("/", "_"), 0)


@pytest.fixture
def tool_servers() -> Iterator[Callable[..., list[ToolServer]]]:
    """Start servers by name and flags (`"name"`, `"name:stateless"`, `"name:legacy"`); all
    stop with the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*specs: str) -> list[ToolServer]:
        servers = [ToolServer(spec.split(":")[0], free_port()) for spec in specs]
        args = [
            ":".join([s.name, str(s.port), *spec.split(":")[1:]])
            for s, spec in zip(servers, specs, strict=True)
        ]
        command = [sys.executable, "-m", "tests.support.toolservers", *args]
        processes.append(subprocess.Popen(command, stderr=subprocess.PIPE))
        for server in servers:
            wait_until_up(server)
        return servers

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def wait_until_up(server: ToolServer, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.control("stats")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1:]))
