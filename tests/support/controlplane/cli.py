"""The control plane for people: ``python -m tests.support.controlplane up|down|serve``.

``hack/controlplane/up.sh`` and ``down.sh`` wrap it. ``up`` starts ``serve`` in the background
and waits until it is ready; ``serve`` runs a control plane (:func:`.startup.start`) in the
foreground until SIGTERM; ``down`` stops the ``serve`` that ``up`` started. ``__main__`` calls
:func:`main`; it lives here so that the package can re-export it without importing
``__main__`` (which would make ``python -m`` warn that the module was already imported).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.controlplane import binaries, cluster, startup


def serve(state_dir: Path, bin_dir: Path) -> int:
    """Run the control plane in the foreground until SIGTERM or Ctrl-C, then stop it."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    plane = startup.start(state_dir, bin_dir)
    (state_dir / "ready").write_text(plane.server)
    print(
        f"control plane ready at {plane.server}; export KUBECONFIG={plane.kubeconfig}", flush=True
    )
    try:
        while not stopping.wait(1.0):
            plane.check_running()
    finally:
        (state_dir / "ready").unlink(missing_ok=True)
        plane.stop()
    return 0


def supervisor_pid(state_dir: Path) -> int | None:
    """The pid of a running ``serve`` started by ``up``, checked against pid reuse."""
    pid_file = state_dir / "serve.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"tests.support.controlplane" in cmdline else None


def up(state_dir: Path, bin_dir: Path) -> int:
    """Start ``serve`` in the background, wait until it is ready, print the export line."""
    kubeconfig = state_dir / "kubeconfig"
    if (pid := supervisor_pid(state_dir)) is not None:
        print(
            f"# already running (pid {pid}); stop it with hack/controlplane/down.sh",
            file=sys.stderr,
        )
        print(f"export KUBECONFIG={kubeconfig}")
        return 0
    if (message := binaries.missing_files_message(bin_dir)) is not None:
        print(message, file=sys.stderr)
        return 1
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "ready").unlink(missing_ok=True)
    command = [sys.executable, "-m", "tests.support.controlplane", "serve"]
    command += [f"--state-dir={state_dir}", f"--bin-dir={bin_dir}"]
    with (state_dir / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=binaries.REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (state_dir / "serve.pid").write_text(str(process.pid))
    ready = lambda: (state_dir / "ready").exists() or process.poll() is not None  # noqa: E731
    cluster.wait_for("control plane", ready, timeout=startup.STARTUP_TIMEOUT * 3)
    if process.poll() is not None:
        print((state_dir / "serve.log").read_text(errors="replace"), file=sys.stderr)
        return 1
    print(
        f"# control plane at {(state_dir / 'ready').read_text()}; logs in {state_dir / 'logs'}",
        file=sys.stderr,
    )
    print(f"export KUBECONFIG={kubeconfig}")
    return 0


def down(state_dir: Path, bin_dir: Path) -> int:
    """Stop the ``serve`` that ``up`` started, and wait until its components are gone."""
    pid = supervisor_pid(state_dir)
    if pid is None:
        print("# control plane not running", file=sys.stderr)
        return 0
    os.kill(pid, signal.SIGTERM)
    cluster.wait_for(f"pid {pid} to exit", lambda: not Path(f"/proc/{pid}").exists(), timeout=60)
    (state_dir / "serve.pid").unlink(missing_ok=True)
    print(f"# control plane stopped (pid {pid})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``up``, ``down`` or ``serve``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.controlplane",
        description="Run the integration tests' Kubernetes control plane for people.",
    )
    parser.add_argument("command", choices=["up", "down", "serve"])
    parser.add_argument("--state-dir", type=Path, default=binaries.REPO / ".cache" / "cluster")
    parser.add_argument("--bin-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    commands = {"up": up, "down": down, "serve": serve}
    return commands[args.command](
        args.state_dir.resolve(), args.bin_dir or binaries.default_bin_dir()
    )
