"""Server-sent events read as they pass: network reads split lines anywhere, so only complete
lines are handed on. Used wherever the proxy looks into a stream it forwards (token usage, the
response cache's recorder)."""

from __future__ import annotations


class LineBuffer:
    """Feed it chunks; it returns the complete lines seen so far, holding back a partial one."""

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete lines this chunk ends (with the partial line before it), newline-joined,
        without the final newline; `b""` when the chunk ends no line."""
        data = self._partial + chunk if self._partial else chunk
        end = data.rfind(b"\n")
        if end < 0:
            self._partial = data
            return b""
        self._partial = data[end + 1 :]
        return data[:end]

    def __repr__(self) -> str:
        return f"<LineBuffer partial={len(self._partial)}B>"
