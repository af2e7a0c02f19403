"""Flame graphs of the proxy under load, with py-spy, and the top costs read from them.

py-spy samples the running proxy from outside (no instrumentation inside it to skew the
profile) while the bench's load runs: one recording as a flame graph (SVG, saved next to the
report) and one as collapsed stacks, from which the functions with the most samples of their
own ("self" time) are listed in the report.
"""

from __future__ import annotations

import collections
import pathlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable

from bench import common


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(pathlib.Path(sys.executable).parent / "py-spy")
    return found if pathlib.Path(found).exists() else None


def record(pid: int, seconds: int, out: pathlib.Path, form: str) -> None:
    command = [py_spy() or "py-spy", "record", "--pid", str(pid), "--duration", str(seconds)]
    command += ["--rate", "250", "--format", form, "--output", str(out), "--nonblocking"]
    subprocess.run(command, capture_output=True, timeout=seconds + 30, check=True)


def profile(
    proxy: common.Proxy, load: Callable[[], object], svg: pathlib.Path, seconds: int
) -> list[tuple[str, float]]:
    """Run `load` (which must last about 2 x `seconds` + 1) while py-spy records `proxy`: a
    flame graph into `svg`, then collapsed stacks; returns the top self-time frames as
    (frame, share of samples)."""
    raw = svg.with_suffix(".txt")
    worker = threading.Thread(target=load)
    worker.start()
    try:
        record(proxy.pid, seconds, svg, "flamegraph")
        record(proxy.pid, seconds, raw, "raw")
    finally:
        worker.join()
    try:
        return top_frames(raw.read_text())
    finally:
        raw.unlink()


def top_frames(collapsed: str, count: int = 12) -> list[tuple[str, float]]:
    """The frames with the most samples at the top of their stack, from py-spy's `raw` format
    (`frame;frame;frame N` per line)."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        total += int(samples)
        own[stack.rsplit(";", 1)[-1]] += int(samples)
    return [(frame, n / total) for frame, n in own.most_common(count)] if total else []
