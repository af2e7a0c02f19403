"""A server built with the third-party ``fastmcp`` framework (4.x), counted like the others.

Two tools (``echo``, ``add``) and a prompt. fastmcp builds on the official SDK's transport, so
it speaks both revisions; it is here so the gateway meets a server it did not write.
"""

from __future__ import annotations

import argparse

from fastmcp import FastMCP

from tests.support.mcp.control import App, Calls, with_control


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="fast")


def build(options: argparse.Namespace) -> App:
    server: FastMCP = FastMCP(options.name)

    @server.tool
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.prompt
    def summarize(topic: str) -> str:
        """Ask for a summary."""
        return f"Summarize {topic}."

    return with_control(server.http_app(path="/mcp"), Calls())
