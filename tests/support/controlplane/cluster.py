"""A running control plane: its component processes, how to reach it, and how to stop it.

:class:`ControlPlane` is what the ``controlplane`` fixture yields and what tests talk to: the
kubeconfig, ``kubectl``, a plain JSON :meth:`ControlPlane.request`, and the components' log
tails for failure reports. :mod:`.startup` launches the components into it; the polling and
port helpers here serve both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


class StartupError(RuntimeError):
    """The control plane did not come up; the message carries the components' log tails."""


@dataclasses.dataclass
class Component:
    """One running binary of the control plane and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        """The last lines of the component's log, headed by its name and state."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        state = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        body = "\n".join(text.splitlines()[-lines:])
        return f"----- {self.name} ({state}): {self.log}\n{body}"

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM) if it still runs."""
        if self.process.poll() is None:
            self.process.terminate()

    def wait(self, timeout: float) -> None:
        """Reap the process, killing it when SIGTERM was not enough within ``timeout``."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclasses.dataclass
class ControlPlane:
    """A running control plane: where it is, how to reach it, and how to stop it."""

    state_dir: Path
    bin_dir: Path
    server: str
    components: list[Component] = dataclasses.field(default_factory=list)

    def __repr__(self) -> str:
        names = ",".join(c.name for c in self.components if c.process.poll() is None)
        return f"<ControlPlane server={self.server} running={names} state_dir={self.state_dir}>"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (client certificate in group system:masters)."""
        return self.state_dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        """The folder of certificates and keys."""
        return self.state_dir / "pki"

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG set, the pinned binaries first on PATH."""
        path = f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return os.environ | {"KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this control plane and capture its output."""
        command = [str(self.bin_dir / "kubectl"), *args]
        return subprocess.run(
            command, input=input, env=self.env, capture_output=True, text=True, check=check
        )

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext:
        """TLS context that trusts the test CA and presents the admin certificate."""
        context = ssl.create_default_context(cafile=self.pki / "ca.crt")
        context.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return context

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """One JSON call to the API server as admin, with no client library in the way.

        Start-up uses this so it needs neither kubectl nor the kubernetes package. Returns
        (status, body as JSON or, failing that, text); connection errors give status 0.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self.ssl_context, timeout=5) as reply:
                return reply.status, decode(reply.read())
        except urllib.error.HTTPError as error:
            with error:  # an HTTPError holds the open response: close it, or it warns
                return error.code, decode(error.read())
        except (urllib.error.URLError, OSError):
            return 0, None

    def launch(self, name: str, args: list[str]) -> None:
        """Start one binary in its own session, its output appended to ``logs/<name>.log``.

        Its own session, so a Ctrl-C at the terminal reaches only us and the components
        are then stopped in order rather than all at once.
        """
        log = self.state_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as output:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [self.bin_dir / name, *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.components.append(Component(name, process, log))

    def check_running(self) -> None:
        """Raise StartupError when a component has exited: waiting longer would not help."""
        dead = [c.name for c in self.components if c.process.poll() is not None]
        if dead:
            raise StartupError(f"{', '.join(dead)} exited\n{self.log_tails()}")

    def log_tails(self, lines: int = 30) -> str:
        """The last lines of every component's log, for failure reports."""
        return "\n".join(component.tail(lines) for component in self.components)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the components: all but etcd together, then etcd, which they depend on."""
        storage = [c for c in self.components if c.name == "etcd"]
        others = [c for c in self.components if c.name != "etcd"]
        for group in (others, storage):
            for component in group:
                component.terminate()
            for component in group:
                component.wait(timeout)


def decode(body: bytes) -> Any:
    """JSON when the API server sent JSON; plain text (as /readyz sends) otherwise."""
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def free_ports(count: int) -> list[int]:
    """Loopback ports the kernel hands out, all held at once so that they differ."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def wait_for(
    what: str,
    ready: Callable[[], bool],
    timeout: float = 60.0,
    check: Callable[[], None] = lambda: None,
) -> None:
    """Poll ``ready`` every 0.1 s until it holds; ``check`` may raise to give up early."""
    deadline = time.monotonic() + timeout
    while not ready():
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)
