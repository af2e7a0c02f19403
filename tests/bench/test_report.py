"""The bench's report writer: ratios, verdicts, the tables and the files (never the numbers)."""

from __future__ import annotations

import pathlib

import pytest
from bench.report import Metric, Report, Scenario, Target, number, times_better

from bench import profiles

HIGHER = Metric("hits/s", "")
LOWER = Metric("CPU/req", "ms", "lower", 3)


@pytest.mark.parametrize(
    ("ours", "theirs", "metric", "shown"),
    [
        pytest.param(20000, 134, HIGHER, "149.3x", id="more-is-better"),
        pytest.param(0.3, 12.0, LOWER, "40.0x", id="less-is-better-is-turned-over"),
        pytest.param(100, 400, HIGHER, "0.25x", id="worse-stays-under-one"),
        pytest.param(None, 1.0, HIGHER, "-", id="no-number-of-ours"),
        pytest.param(1.0, 0.0, LOWER, "-", id="never-divides-by-zero"),
    ],
)
def test_times_better_always_reads_the_way_up(
    ours: float | None, theirs: float | None, metric: Metric, shown: str
) -> None:
    assert times_better(ours, theirs, metric) == shown


@pytest.mark.parametrize(
    ("target", "verdict"),
    [
        pytest.param(Target("hits", 21000, 20000, "higher"), "met", id="higher-met"),
        pytest.param(
            Target("hits", 15000, 20000, "higher", "/s"), "MISSED by 5,000/s (25%)", id="short"
        ),
        pytest.param(
            Target("cpu", 0.42, 0.35, "lower", " ms"), "MISSED by 0.07 ms (20%)", id="over"
        ),
        pytest.param(Target("cpu", 0.35, 0.35, "lower"), "met", id="on-the-line-is-met"),
        pytest.param(Target("drift", None, 5, "lower"), "not measured", id="unmeasured"),
    ],
)
def test_a_target_says_met_or_by_how_much_it_missed(target: Target, verdict: str) -> None:
    assert target.verdict() == verdict


def scenario() -> Scenario:
    s = Scenario("Hits", "About the hits.", [HIGHER, LOWER], peer="litellm", chart="hits/s")
    s.add("sluice", **{"hits/s": 20000.0, "CPU/req": 0.05})
    s.add("litellm", "slow | and noted", **{"hits/s": 125.0, "CPU/req": None})
    return s


def test_the_table_has_a_row_per_system_and_the_ratio_to_litellm() -> None:
    text = Report("T", [], [], [scenario()]).markdown()
    assert "| system | hits/s | CPU/req (ms) | vs LiteLLM | note |" in text
    assert "| sluice | 20,000 | 0.050 | 160.0x |  |" in text
    assert "| litellm | 125 | - | - | slow \\| and noted |" in text


def test_the_targets_table_shows_goal_measured_and_verdict() -> None:
    targets = [Target("cache hits/s", 18000, 20000, "higher", "/s", "floor 40,000/s")]
    text = Report("T", ["Preamble."], targets, []).markdown()
    assert (
        "| cache hits/s | ≥ 20,000/s | 18,000/s | MISSED by 2,000/s (10%) | floor 40,000/s |"
        in text
    )
    assert text.index("Preamble.") < text.index("## Targets")


def test_write_makes_the_markdown_and_a_chart_it_links(tmp_path: pathlib.Path) -> None:
    written = Report("T", [], [], [scenario()], [("Extra", "more")]).write(tmp_path)
    assert [p.name for p in written] == ["benchmarks.md", "benchmarks.png"]
    assert (tmp_path / "benchmarks.png").read_bytes().startswith(b"\x89PNG")
    text = (tmp_path / "benchmarks.md").read_text()
    assert "![one panel per scenario](benchmarks.png)" in text
    assert text.endswith("## Extra\n\nmore\n")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(12345.6, "12,346", id="thousands"),
        pytest.param(123.4, "123", id="hundreds"),
        pytest.param(0.1234, "0.12", id="small"),
        pytest.param(None, "-", id="none"),
    ],
)
def test_numbers_are_shown_with_fewer_digits_the_bigger_they_are(
    value: float | None, shown: str
) -> None:
    assert number(value) == shown


def test_top_frames_counts_the_leaf_of_each_stack() -> None:
    collapsed = "main;serve;send (a.py:1) 6\nmain;serve;parse (b.py:2) 3\nmain;idle (c.py:3) 1\n"
    top = profiles.top_frames(collapsed)
    assert top[0] == ("send (a.py:1)", 0.6)
    assert [frame for frame, _ in top] == ["send (a.py:1)", "parse (b.py:2)", "idle (c.py:3)"]
