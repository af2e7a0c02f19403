"""The MCP bench's table cells: ratios and verdicts (the numbers themselves are never asserted)."""

from __future__ import annotations

import pytest

from bench import common
from bench import mcp as bench_mcp


@pytest.mark.parametrize(
    ("ours", "theirs", "shown"),
    [
        pytest.param(0.002, 0.004, "0.50x", id="faster-is-under-one"),
        pytest.param(0.0021, 0.0007, "3.00x", id="slower-is-over-one"),
        pytest.param(0.0005, 1.2, "0.0004x", id="tiny-shares-keep-their-digits"),
        pytest.param(None, 0.2, "-", id="no-number-of-ours"),
        pytest.param(0.2, None, "-", id="no-number-of-theirs"),
        pytest.param(0.2, 0.0, "-", id="never-divides-by-zero"),
    ],
)
def test_ratio_is_sluice_over_the_peer(
    ours: float | None, theirs: float | None, shown: str
) -> None:
    assert bench_mcp.ratio(ours, theirs) == shown


def test_a_row_compares_cold_by_cold_and_warm_mean_by_warm_mean() -> None:
    ours = bench_mcp.Row("sluice", cold=0.2, warm=common.Result(2, 1.0, [0.001, 0.003], 0))
    peer = bench_mcp.Row("peer", cold=0.4, warm=common.Result(2, 1.0, [0.1, 0.3], 0), baseline=ours)
    cells = bench_mcp.latency_cells(peer)
    assert cells[1:6] == ["400.00", "200.00", "200.00", "300.00", "0.50x / 0.01x"]


def test_a_missed_target_says_so_loudly() -> None:
    assert bench_mcp.judge(True, "p50 ≤ 1 ms") == "p50 ≤ 1 ms: met"
    assert bench_mcp.judge(False, "p50 ≤ 1 ms") == "p50 ≤ 1 ms: MISSED"
