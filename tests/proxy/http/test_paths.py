"""Only paths that stay where they appear to be are passed upstream."""

from __future__ import annotations

import pytest

from sluice.proxy.http import paths


@pytest.mark.parametrize(
    "path",
    ["/v1/files", "/v1/files/file-abc123/content", "/v1/fine_tuning/jobs", "/v1/models/gpt-4o"],
)
def test_ordinary_api_paths_pass(path: str) -> None:
    assert paths.passable(path)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v1/../admin", id="dot-dot"),
        pytest.param("/v1/..", id="dot-dot-at-the-end"),
        pytest.param("/v1/./files", id="dot"),
        pytest.param("/v1//evil.example/x", id="empty-segment"),
        pytest.param("/v1/..\\admin", id="backslash"),
        pytest.param("/v1/%2e%2e/admin", id="double-encoded-dots"),
        pytest.param("/v1/files\x00", id="nul"),
        pytest.param("/v1/files\r\nx: y", id="crlf"),
        pytest.param("v1/files", id="relative"),
        pytest.param("/v1/chat/completions#", id="decoded-hash"),
        pytest.param("/v1/files?x=1", id="decoded-question-mark"),
        pytest.param("/v1/..;/admin", id="semicolon-dot-dot"),
    ],
)
def test_paths_that_could_leave_their_place_are_refused(path: str) -> None:
    assert not paths.passable(path)


def test_dots_inside_a_segment_are_fine() -> None:
    assert paths.passable("/v1/files/report..v2.jsonl")
