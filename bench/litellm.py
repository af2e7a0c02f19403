"""LiteLLM's proxy, the gateway most users would install instead, as a peer in the same run.

Installed pinned (`litellm[proxy]`) into a virtual environment of its own under
~/.cache/sluice/bench/ on first use, so it never shapes the project's environment. Why this
version: the newest whose `[proxy]` pins (litellm-proxy-extras, litellm-enterprise) all resolve
on the registry this project uses, and later than the compromised 1.107.0 release.

It is started with a config that routes the bench's two models to the simulator, with
`LITELLM_MASTER_KEY` set (it refuses to serve without one here) and, for the cache rows, its
cache on (`local` in memory, or `redis`). Loopback only; its price map is read locally.
"""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import yaml

from bench import common

VERSION = "1.108.0"
VENV = pathlib.Path.home() / ".cache" / "sluice" / "bench" / f"litellm-{VERSION}"
MASTER_KEY = "sk-bench"
"""The key the load generator sends as its bearer token, so every request is authorised."""
MODELS = ("gpt-4o-mini", "text-embedding-3-small")
START_SECONDS = 120
"""LiteLLM imports for a long time on a busy machine; bounded all the same."""


def ensure() -> pathlib.Path:
    """The venv's `litellm` command, installing it on first use."""
    command = VENV / "bin" / "litellm"
    if not command.exists():
        print(f"installing litellm[proxy]=={VERSION} into {VENV} (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "pip"), "install", "--quiet"]
        subprocess.run([*pip, f"litellm[proxy]=={VERSION}"], check=True, timeout=1200)
    return command


def config(upstream: str, cache: dict[str, Any] | None) -> dict[str, Any]:
    """LiteLLM's proxy config: the bench's models on the simulator; its cache when given."""
    models = [
        {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{name}",
                "api_base": upstream,
                "api_key": "sk-sim",
            },
        }
        for name in MODELS
    ]
    settings: dict[str, Any] = {"drop_params": False}
    if cache is not None:
        settings |= {"cache": True, "cache_params": cache}
    return {"model_list": models, "litellm_settings": settings}


@contextlib.contextmanager
def proxy(
    upstream: str, cache: dict[str, Any] | None = None, cpu: str | None = None
) -> Iterator[common.Proxy]:
    """LiteLLM's proxy in its own process, one worker; yields its `/v1` base URL and pid."""
    command = ensure()
    port = common.free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config(upstream, cache), f)
    argv = [str(command), "--config", f.name, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "1"]
    env = {
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price map at start
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
    }
    url = f"http://127.0.0.1:{port}"
    try:
        process = common.spawn(argv, url + "/health/liveliness", cpu, env, START_SECONDS)
        try:
            yield common.Proxy(url + "/v1", process.pid)
        finally:
            common.stop(process)
    finally:
        pathlib.Path(f.name).unlink()
