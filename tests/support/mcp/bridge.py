"""mcp-server-time behind mcp-proxy: a third-party stdio server bridged to Streamable HTTP.

``mcp-proxy`` releases that run need ``mcp<2`` (0.13.0 pins ``mcp>=1.27.1,<2``; 0.12.0 accepts
mcp 2 on paper and then fails to import), so it cannot share the test venv with ``mcp>=2.3``.
:func:`ensure_venv` builds it a venv of its own once, under ``~/.cache/sluice/``, with pip.
That makes this bridge a real handshake-only server (mcp 1.x): a ``mode="auto"`` client falls
back to ``initialize`` here. mcp-server-time itself runs from the test venv, through
:mod:`.relay`, which counts the methods that reach it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

MCP_PROXY_VERSION = "0.13.0"
INSTALL_TIMEOUT_SECONDS = 300


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SLUICE_CACHE", pathlib.Path.home() / ".cache" / "sluice"))


def ensure_venv() -> pathlib.Path:
    """The ``mcp-proxy`` executable, installing it into its own venv the first time."""
    venv = cache_dir() / f"mcp-proxy-{MCP_PROXY_VERSION}"
    done = venv / "sluice-complete"
    if not done.exists():
        # Built in place (a venv's scripts name their interpreter by absolute path); the marker,
        # written last, tells a finished install from an interrupted one, which is redone.
        shutil.rmtree(venv, ignore_errors=True)
        run([sys.executable, "-m", "venv", str(venv)])
        run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                f"mcp-proxy=={MCP_PROXY_VERSION}",
            ]
        )
        done.write_text(f"mcp-proxy=={MCP_PROXY_VERSION}\n")
    return venv / "bin" / "mcp-proxy"


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, timeout=INSTALL_TIMEOUT_SECONDS, stdout=subprocess.DEVNULL)


def command(port: int, calls_log: pathlib.Path) -> list[str]:
    """The mcp-proxy command line serving mcp-server-time on a loopback port."""
    return [
        str(ensure_venv()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "WARNING",
        "--pass-environment",
        "--",  # what follows is the child's command line, even where it looks like our options
        sys.executable,
        "-m",
        "tests.support.mcp.relay",
        "--log",
        str(calls_log),
        "--",
        sys.executable,
        "-m",
        "mcp_server_time",
        "--local-timezone",
        "UTC",
    ]
