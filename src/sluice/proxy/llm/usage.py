"""Token usage read from upstream answers, whole JSON bodies and SSE streams alike.

A regular expression over the bytes instead of a JSON parse: an embeddings answer can be
hundreds of kilobytes of vectors, and only two integers are wanted from it.
"""

from __future__ import annotations

import re

import prometheus_client

from sluice.proxy import metrics
from sluice.proxy.http import sse

Usage = tuple[int, int]
"""(prompt tokens, completion tokens)."""

_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
# A usage object, with its nested *_details objects, fits well within this many bytes.
_USAGE_SPAN = 1024


def from_body(body: bytes) -> Usage | None:
    """The last non-null `usage` object in a JSON body (OpenAI puts the top-level one last)."""
    start = _last_usage(body)
    if start < 0:
        return None
    fields = body[start : start + _USAGE_SPAN]
    prompt = _PROMPT.search(fields)
    completion = _COMPLETION.search(fields)
    return (int(prompt.group(1)) if prompt else 0, int(completion.group(1)) if completion else 0)


def _last_usage(body: bytes) -> int:
    """Where the last `"usage": {` ends, -1 for none: looked for from the end, so the vectors
    and choices before it are skipped by `rfind` (C) rather than read by the regex (matches
    cannot overlap, so the last to start is the last `finditer` would give)."""
    at = body.rfind(b'"usage"')
    while at >= 0:
        found = _USAGE.match(body, at)
        if found is not None:
            return found.end()
        at = body.rfind(b'"usage"', 0, at)
    return -1


class StreamScanner:
    """Watches an SSE byte stream for the usage chunk that `include_usage` adds before `[DONE]`.

    Only complete lines are examined, and only those that mention a non-null usage.
    """

    __slots__ = ("_lines", "usage")

    def __init__(self) -> None:
        self._lines = sse.LineBuffer()
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        lines = self._lines.feed(chunk)
        if b'"usage":{' not in lines and b'"usage": {' not in lines:
            return
        for line in lines.split(b"\n"):
            if line.startswith(b"data:") and b'"usage"' in line:
                self.usage = from_body(line) or self.usage


def count(
    counter: prometheus_client.Counter | metrics.LoopCounter, endpoint: str, counts: Usage | None
) -> None:
    """Add `counts` to `counter`'s prompt and completion series of `endpoint`."""
    if counts is None:
        return
    prompt, completion = counts
    if prompt:
        counter.labels(endpoint, "prompt").inc(prompt)
    if completion:
        counter.labels(endpoint, "completion").inc(completion)


def saved(endpoint: str, body: bytes) -> None:
    """Count the tokens of an answer served without an upstream call (a hit, a shared call)."""
    count(metrics.llm_tokens_saved, endpoint, from_body(body))
