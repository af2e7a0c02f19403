"""A real `redis-server` for integration tests, on a free loopback port, killable and restartable.

Fixture `redis_server` (enable with `pytest_plugins = ["tests.support.redis"]`) yields a
`RedisServer`: `.url` for the proxy's `REDIS_URL`, `.kill()` (SIGKILL, as a crash would) and
`.start()` again on the same port, for the fail-open tests. No persistence (`--save ''
--appendonly no`), so a restarted server is empty, like a replaced pod.

Where `redis-server` is missing the tests that need it are skipped with a message, except in CI
(`CI` set), where that is a broken install step and fails them (Debian package `redis-server`).
"""

from __future__ import annotations

import pathlib
import socket
import subprocess
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import pytest

from tests.support import processes
from tests.support.proxy import free_port

START_TIMEOUT_SECONDS = 10.0


class RedisServer:
    """One `redis-server` process; its port stays the same across restarts."""

    def __init__(
        self, binary: str, workdir: pathlib.Path, port: int, extra: Sequence[str] = ()
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.extra = list(extra)
        """More arguments (cluster mode, `--replicaof`: `tests.support.redistopologies`)."""
        self.log_path = workdir / f"redis-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arguments(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.log_path),
            *self.extra,
        ]

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(self.arguments(), stdout=subprocess.DEVNULL)
        processes.wait_started(
            "redis-server",
            self.process,
            self.ping,
            self.log,
            timeout=START_TIMEOUT_SECONDS,
            interval=0.02,
        )
        return self

    def kill(self) -> None:
        """SIGKILL: connections break at once, as when Redis crashes."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        processes.stop(self.process)

    def command(self, *args: str) -> bytes:
        """Send one command (inline protocol) and return its whole reply, raw."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(" ".join(args).encode() + b"\r\n")
            with conn.makefile("rb") as replies:
                return read_reply(replies)

    def ping(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False

    def dbsize(self) -> int:
        return int(self.command("DBSIZE").strip().lstrip(b":"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __repr__(self) -> str:
        running = self.process is not None and self.process.poll() is None
        return f"<RedisServer {self.url} {'running' if running else 'stopped'}>"


def read_reply(replies: BinaryIO) -> bytes:
    """One RESP2 reply, raw: a line, plus a bulk string's bytes or an array's elements."""
    line = replies.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, size = line[:1], line[1:].strip()
    if kind == b"$" and int(size) >= 0:
        return line + replies.read(int(size) + 2)
    if kind == b"*" and int(size) > 0:
        return line + b"".join(read_reply(replies) for _ in range(int(size)))
    return line


@pytest.fixture
def redis_server(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    """A fresh, empty `redis-server` for one test."""
    binary = processes.binary("redis-server", "redis-server")
    server = RedisServer(binary, tmp_path, free_port()).start()
    yield server
    server.stop()
