"""The bench's results as data, and the two files written from them: `docs/benchmarks.md` and
`docs/benchmarks.png`.

A `Scenario` holds one table (a row per system, a column per metric) and the metric its chart
panel shows; `Target`s are the issue's goals, each judged on a number from the same run. Ratios
to LiteLLM are worked out here, once, from the rows of the same scenario, so no figure in the
report was typed by hand.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Literal

Better = Literal["higher", "lower"]


@dataclasses.dataclass
class Metric:
    name: str
    unit: str
    better: Better = "higher"
    digits: int = 2


@dataclasses.dataclass
class Row:
    system: str
    values: dict[str, float | None]
    note: str = ""


@dataclasses.dataclass
class Scenario:
    """One table of the report and one panel of its chart."""

    title: str
    about: str
    metrics: list[Metric]
    rows: list[Row] = dataclasses.field(default_factory=list)
    chart: str = ""
    """The metric of the chart's panel (default: the first)."""
    peer: str | None = None
    """The row (a LiteLLM one) that the `vs LiteLLM` column divides by; None: no such column."""
    ratio_of: str = ""
    """The metric of that column (default: the chart's)."""

    def add(self, system: str, note: str = "", **values: float | None) -> Row:
        row = Row(system, dict(values), note)
        self.rows.append(row)
        return row

    def value(self, system: str, metric: str) -> float | None:
        for row in self.rows:
            if row.system == system:
                return row.values.get(metric)
        return None

    def ratio(self, row: Row) -> str:
        """How many times better than the peer this row is, on `ratio_of` ("-" when unknown)."""
        metric = self.metric(self.ratio_of or self.chart or self.metrics[0].name)
        if self.peer is None or row.system == self.peer:
            return "-"
        return times_better(row.values.get(metric.name), self.value(self.peer, metric.name), metric)

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)


@dataclasses.dataclass
class Target:
    """One goal of the issue, judged on a measured number."""

    what: str
    measured: float | None
    goal: float
    better: Better
    unit: str = ""
    why: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None or math.isnan(self.measured):
            return None
        if self.better == "higher":
            return self.measured >= self.goal
        return self.measured <= self.goal

    def verdict(self) -> str:
        if self.met is None:
            return "not measured"
        if self.met:
            return "met"
        assert self.measured is not None
        short = abs(self.measured - self.goal)
        share = short / abs(self.goal) if self.goal else math.inf
        return f"MISSED by {number(short)}{self.unit} ({share:.0%})"


def times_better(ours: float | None, theirs: float | None, metric: Metric) -> str:
    """`ours` over `theirs` as "Nx", the way up being better: for a metric where lower is
    better (latency, CPU) the division is turned over, so 40x always means 40 times better."""
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return "-"
    factor = ours / theirs if metric.better == "higher" else theirs / ours
    return f"{factor:,.1f}x" if factor >= 0.995 else f"{factor:.2f}x"


def number(value: float | None, digits: int = 2) -> str:
    """A figure for a table: thousands separated, fewer decimals the bigger it is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}" if digits < 3 else f"{value:.1f}"
    return f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def scenario_table(scenario: Scenario) -> str:
    header = ["system", *(f"{m.name} ({m.unit})" if m.unit else m.name for m in scenario.metrics)]
    if scenario.peer is not None:
        header.append("vs LiteLLM")
    header.append("note")
    rows = []
    for row in scenario.rows:
        cells = [row.system]
        cells += [number(row.values.get(m.name), m.digits) for m in scenario.metrics]
        if scenario.peer is not None:
            cells.append(scenario.ratio(row))
        cells.append(row.note)
        rows.append(cells)
    return markdown_table(header, rows)


def targets_table(targets: list[Target]) -> str:
    rows = [
        [
            t.what,
            f"{'≥' if t.better == 'higher' else '≤'} {number(t.goal)}{t.unit}",
            number(t.measured) + (t.unit if t.measured is not None else ""),
            t.verdict(),
            t.why,
        ]
        for t in targets
    ]
    return markdown_table(["target", "goal", "measured", "verdict", "why / how"], rows)


@dataclasses.dataclass
class Report:
    title: str
    preamble: list[str]
    """Paragraphs before the tables: the machine, versions, load, the exact commands."""
    targets: list[Target]
    scenarios: list[Scenario]
    sections: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """Further (heading, markdown) sections: GC and pooling, the profile, what was not done."""

    def markdown(self, chart: str | None = None) -> str:
        parts = [f"# {self.title}", *self.preamble]
        if chart is not None:
            parts.append(f"![one panel per scenario]({chart})")
        parts += ["## Targets", targets_table(self.targets)]
        for scenario in self.scenarios:
            parts += [f"## {scenario.title}", scenario.about, scenario_table(scenario)]
        for heading, body in self.sections:
            parts += [f"## {heading}", body]
        return "\n\n".join(part.strip() for part in parts if part.strip()) + "\n"

    def write(self, folder: pathlib.Path, stem: str = "benchmarks") -> list[pathlib.Path]:
        """Write `<stem>.md` and, when matplotlib is there, `<stem>.png` into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        png = folder / f"{stem}.png"
        drew = chart(self.scenarios, png)
        md = folder / f"{stem}.md"
        md.write_text(self.markdown(png.name if drew else None))
        return [md, png] if drew else [md]


def chart(scenarios: list[Scenario], path: pathlib.Path) -> bool:
    """One horizontal-bar panel per scenario, of its chart metric; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    drawn = [s for s in scenarios if any(r.values.get(chart_metric(s).name) for r in s.rows)]
    if not drawn:
        return False
    columns = 2
    lines = math.ceil(len(drawn) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(13, 3.2 * lines), squeeze=False)
    for ax, scenario in zip(axes.flat, drawn, strict=False):
        metric = chart_metric(scenario)
        rows = [r for r in scenario.rows if r.values.get(metric.name) is not None]
        values = [float(r.values[metric.name] or 0) for r in rows]
        colours = [colour(r.system) for r in rows]
        ax.barh([r.system for r in rows], values, color=colours)
        ax.invert_yaxis()
        if values and max(values) / max(min(v for v in values if v > 0) or 1, 1e-9) > 50:
            ax.set_xscale("log")
        arrow = "higher is better" if metric.better == "higher" else "lower is better"
        ax.set_title(f"{scenario.title}\n{metric.name} ({metric.unit}), {arrow}", fontsize=9)
        ax.tick_params(labelsize=8)
        for y, v in enumerate(values):
            ax.text(v, y, f" {number(v, metric.digits)}", va="center", fontsize=7)
    for ax in list(axes.flat)[len(drawn) :]:
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def chart_metric(scenario: Scenario) -> Metric:
    return scenario.metric(scenario.chart or scenario.metrics[0].name)


def colour(system: str) -> str:
    name = system.lower()
    if name.startswith("sluice"):
        return "#2b7bba"
    if name.startswith("litellm"):
        return "#d95f02"
    return "#999999"
