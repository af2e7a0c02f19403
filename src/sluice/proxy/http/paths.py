"""Which request paths may be passed through: only those that stay where they appear to be.

Upstream servers normalise a path after the proxy has routed it, so `/v1/../admin` (sent with
the proxy's own API key) would reach `/admin` (FACTS.md). uvicorn hands the app the path
percent-decoded once, so `%2e%2e` and `..%2f` arrive as dot segments and slashes; a `%` left
after that decoding is a second layer of encoding that some servers decode again. A path
passes only when it has no dot segment, no empty segment (`//`), no backslash, no `%`, no
decoded `?` or `#` (which would move part of the path into the query or drop it), no `;`
(which some servers read as a parameter, so `..;` as `..`) and no control character: no
OpenAI-compatible route needs any of them.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"(^|/)\.{1,2}(/|$)|//|[\\%?#;\x00-\x1f\x7f]")


def passable(path: str) -> bool:
    """May this (percent-decoded) path be routed and passed upstream as it is?"""
    return path.startswith("/") and _UNSAFE.search(path) is None
