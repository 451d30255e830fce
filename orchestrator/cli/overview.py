"""Reading a sweep for people: where a sweep named on the command line lives, one run's
whole story, and a sweep's overview (grid, counts, N*, fits, figures). Typed functions
over the files; the CLI only prints what they return."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from orchestrator import sweep as api
from orchestrator.results.store import absolute, existing, locate
from schemas.errors import JamsweepError
from schemas.layout import SweepLayout
from schemas.run import RunRecord, RunSpec
from schemas.summary import Summary
from workers import io

__all__ = ["RunDetail", "SweepOverview", "locate", "overview", "run_detail"]


# -- one run --------------------------------------------------------------------------------


@dataclass
class RunDetail:
    """One run: its status record, end-of-run metrics (once finished), the last rows of its
    trace (loss, N_Delta, ... at the measurement steps; jamsweep keeps no per-run log file:
    the trace is what a run leaves while it trains, written with its results) and its
    checkpoint, if one is there."""

    record: RunRecord
    metrics: dict | None
    trace_tail: pd.DataFrame | None
    checkpoint: str | None
    files: dict[str, str] = field(default_factory=dict)  # what -> path, for those present
    point: str = ""  # its values of the sweep's varying axes ("train_size=500")


def run_detail(
    sweep: str, run_id: str, *, results: str, address: str | None = None, tail: int = 10
) -> RunDetail:
    """The run of `sweep` whose id is `run_id` or starts with it (as git takes a short id)."""
    st = api.status(sweep, results=results, address=address)
    matches = [r for r in st.records if r.run_id.startswith(run_id)]
    if len(matches) != 1:
        what = "no run" if not matches else f"{len(matches)} runs"
        raise JamsweepError(
            f"sweep {sweep!r} has {what} whose id starts with {run_id!r}; "
            f"`jamsweep status {sweep}` lists the run ids"
        )
    record = matches[0]
    layout = existing(sweep, absolute(results) if address is None else results)
    key = (record.run_id, record.arch, record.width, record.seed)
    files = {
        "metrics": layout.file("metrics", *key),
        "logits": layout.file("logits", *key),
        "trace": layout.file("trace", *key),
        "checkpoint": layout.checkpoint(record.run_id),
    }
    present = {k: p for k, p in files.items() if io.exists(p)}
    metrics = _first_row(present.get("metrics"))
    trace = None
    if "trace" in present:
        trace = io.read_table(present["trace"]).to_pandas().sort_values("step").tail(tail)
    point = st.points.get(record.run_id, "")
    return RunDetail(record, metrics, trace, present.get("checkpoint"), present, point)


def _first_row(path: str | None) -> dict | None:
    if path is None:
        return None
    rows = io.read_table(path).to_pylist()
    return rows[0] if rows else None


# -- a sweep --------------------------------------------------------------------------------


@dataclass
class SweepOverview:
    layout: SweepLayout
    grid_text: str
    status: api.SweepStatus
    summary: Summary | None  # summary.json, once reduced
    curves: pd.DataFrame | None  # curves.parquet, once reduced
    figures: list[str]  # figures/* present (png, pdf, svg)
    report: str | None  # report.html, if written
    data: str | None = None  # the labels' mapping, the label noise, the files' facts


def overview(sweep: str, *, results: str) -> SweepOverview:
    """What `jamsweep show` prints: the grid as submitted, how its labels became targets,
    run counts, the curve table, N* and the fits with their quality (once reduced) and
    where the figures and the report are."""
    layout = existing(sweep, absolute(results))
    summary, curves = None, None
    if io.exists(layout.summary):
        summary = api.load_summary(sweep, results=layout.results)
    if io.exists(layout.curves):
        curves = io.read_table(layout.curves).to_pandas()
    figures = sorted(
        p for fmt in (".png", ".pdf", ".svg") for p in io.list_files(layout.figures_dir, fmt)
    )
    return SweepOverview(
        layout=layout,
        grid_text=io.read_text(layout.grid_yaml),
        status=api.status(sweep, results=layout.results),
        summary=summary,
        curves=curves,
        figures=figures,
        report=layout.report if io.exists(layout.report) else None,
        data=data_line(layout),
    )


def data_line(layout: SweepLayout) -> str | None:
    """'labels: "B" -> -1, "M" -> +1; 30 features -> d = 30; ...' from the manifest's first
    run (every run of a sweep shares its data), or None before there is a manifest."""
    if not io.exists(layout.manifest):
        return None
    first = io.read_table(layout.manifest, ["spec"]).slice(0, 1).column(0).to_pylist()
    if not first:
        return None
    spec = RunSpec.model_validate_json(first[0])
    parts = [f"labels: {spec.label_map}"]
    data = spec.dataset
    if data.resolved is not None:
        facts = data.resolved
        test = f", {facts.n_test_rows} test rows" if facts.n_test_rows is not None else ""
        inputs = f"{len(facts.features)} feature columns" if facts.features else "x"
        parts.append(f"{facts.n_train_rows} rows{test}; {inputs} -> d = {facts.d_in}")
    if data.label_noise > 0:
        n = round(data.label_noise * data.train_size)
        parts.append(
            f"label_noise {data.label_noise:g}: {n} of the {data.train_size} training labels "
            "replaced"
        )
    parts += module_parts(layout)
    return "; ".join(parts)


def module_parts(layout: SweepLayout) -> list[str]:
    """'ARCH: MODULE:FUNCTION (PATH, source SHA12), violator-only steps' for each `kind:
    module` architecture of the manifest (or 'full-batch steps: WHY' for one that mixes the
    samples of a batch)."""
    shown: dict[str, str] = {}
    for text in io.read_table(layout.manifest, ["spec"]).column(0).to_pylist():
        spec = RunSpec.model_validate_json(text)
        if spec.arch.kind != "module" or spec.arch.name in shown:
            continue
        facts = spec.module_facts
        steps = (
            "violator-only steps"
            if facts.batch_mixing is None
            else f"full-batch steps ({facts.batch_mixing})"
        )
        shown[spec.arch.name] = (
            f"{spec.arch.name}: {spec.arch.builder} ({facts.location}, source "
            f"{facts.source_sha256[:12]}), {steps}"
        )
    return list(shown.values())
