"""The results table, from the store: one row per study, its result as the champion's confirmed
mean ± 95 % CI over seeds (``study.confirm``), against the spec's ``study.target``.

A row says where its interval lies: entirely past the target (``meets``), across it
(``inconclusive``), or entirely short of it (``below target``). A study that confirmed nothing
reports its single best run and says so. ``workbench results`` prints the table as Markdown, the
form the README's table takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench import tracking
from workbench.spec import load_spec


@dataclass
class Row:
    study: str
    model: str
    data: str
    metric: str
    mean: float | None
    half_width: float | None
    seeds: int
    target: str
    verdict: str

    def markdown(self) -> str:
        if self.mean is None:
            result = "no result"
        elif self.seeds >= 2:
            result = f"**{self.mean:.4f} ± {self.half_width:.4f}** ({self.seeds} seeds)"
        else:
            result = f"{self.mean:.4f} (one run)"
        command = f"`workbench study experiments/{self.study}.yaml`"
        cells = [self.study, f"{self.model} / {self.data}", self.metric, result, self.target]
        return "| " + " | ".join([*cells, self.verdict, command]) + " |"


HEADER = (
    "| study | model / data | metric | result (mean ± 95 % CI) | target | verdict | command |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def verdict(mean: float, half: float, seeds: int, at_least=None, at_most=None) -> str:
    """Where the interval [mean - half, mean + half] lies against the target."""
    if at_least is None and at_most is None:
        return "no target"
    if seeds < 2:
        return "single run: not confirmed"
    low, high = mean - half, mean + half
    if at_least is not None:
        return "meets" if low >= at_least else "below target" if high < at_least else "inconclusive"
    return "meets" if high <= at_most else "below target" if low > at_most else "inconclusive"


def study_row(store, parent_run) -> Row:
    """The row of one study's parent run."""
    raw = tracking.run_spec(store, parent_run.info.run_id)
    raw.setdefault("tracking", {})["root"] = str(store.root)
    spec = load_spec(raw)
    target = spec.study.target
    metric = target.metric or "test/" + spec.study.metric.split("/", 1)[1]
    summary = tracking.read_json(store, parent_run.info.run_id, "confirm/summary.json") or []
    champion = summary[0] if summary else None
    if champion is not None and f"{metric}_mean" in champion:
        mean, half, seeds = champion[f"{metric}_mean"], champion[f"{metric}_ci"], champion["n"]
    else:
        mean = parent_run.data.metrics.get(f"best/{metric.replace('/', '_')}")
        half, seeds = 0.0, 1
    bound = ""
    if target.at_least is not None:
        bound = f"≥ {target.at_least:g}"
    elif target.at_most is not None:
        bound = f"≤ {target.at_most:g}"
    judged = (
        "no result" if mean is None
        else verdict(mean, half, seeds, target.at_least, target.at_most)
    )  # fmt: skip
    return Row(
        spec.name, spec.model.name, spec.data.name, metric, mean, half, seeds, bound or "–", judged
    )


def results(root: str | Path = "mlruns", experiment: str = "workbench") -> list[Row]:
    """A row per study in the store, by study name."""
    from workbench.trained_model import _store

    store = _store(root, experiment)
    parents = store.client.search_runs(
        [store.experiment_id],
        filter_string=f"tags.`{tracking.ROLE}` = 'study'",
        max_results=10_000,
    )
    rows = [study_row(store, run) for run in parents if run.info.status == "FINISHED"]
    return sorted(rows, key=lambda row: row.study)


def markdown(rows: list[Row]) -> str:
    return "\n".join([HEADER, *(row.markdown() for row in rows)])
