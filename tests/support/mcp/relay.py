"""A stdio relay that counts: runs an MCP server over stdio and logs each method it is sent.

``python -m tests.support.mcp.relay --log FILE -- COMMAND...`` starts COMMAND, copies this
process's stdin to it and its stdout back, and appends the JSON-RPC method of every message
sent to it to FILE, one per line. mcp-proxy runs this instead of mcp-server-time itself, so a
test can count the tools/list calls that reached the third-party server behind the bridge.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import threading
from typing import BinaryIO


def copy(source: BinaryIO, target: BinaryIO, log: pathlib.Path | None) -> None:
    for line in iter(source.readline, b""):
        if log is not None:
            with log.open("a") as out:
                out.write(method_of(line) + "\n")
        target.write(line)
        target.flush()
    target.close()


def method_of(line: bytes) -> str:
    try:
        message = json.loads(line)
    except ValueError:
        return "?"
    return str(message.get("method", "(response)")) if isinstance(message, dict) else "(batch)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.mcp.relay")
    parser.add_argument("--log", type=pathlib.Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    command = [part for part in options.command if part != "--"]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None
    assert child.stdout is not None
    inbound = threading.Thread(
        target=copy, args=(sys.stdin.buffer, child.stdin, options.log), daemon=True
    )
    inbound.start()
    copy(child.stdout, sys.stdout.buffer, None)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
