"""Server-sent events split anywhere by the network still come out as whole lines."""

from __future__ import annotations

from sluice.proxy.http import sse


def test_lines_are_handed_on_only_once_complete() -> None:
    lines = sse.LineBuffer()
    assert lines.feed(b'data: {"a"') == b""
    assert lines.feed(b":1}\n\ndata: [DO") == b'data: {"a":1}\n'
    assert lines.feed(b"NE]\n\n") == b"data: [DONE]\n"
    assert lines.feed(b"") == b""


def test_every_split_of_a_stream_gives_the_same_lines() -> None:
    stream = b"data: one\n\ndata: two\n\n"
    for cut in range(len(stream) + 1):
        lines = sse.LineBuffer()
        seen = lines.feed(stream[:cut]) + b"\n" + lines.feed(stream[cut:])
        assert [line for line in seen.split(b"\n") if line] == [b"data: one", b"data: two"]
