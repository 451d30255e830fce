"""reduce: a sweep's result files to curves.parquet, ensemble.parquet, training.parquet,
snapshots.parquet and summary.json (then the figures). Streams one width at a time through
workers.sweep_reader; the numbers come from workers.reduce, .ensembles, .history, .fits and
.ensemble_fits. orchestrator.results.reduced reads the written tables back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from orchestrator.results.reduced import Reduced
from orchestrator.results.store import existing, finished_and_broken, set_aside
from schemas.errors import JamsweepError
from schemas.layout import RESULTS_DEFAULT, SweepLayout
from schemas.summary import EnsembleOver, Summary
from workers import io
from workers.ensemble_fits import fit_ensembles, with_excess_inf
from workers.ensembles import ENSEMBLE_COLUMNS, MAX_SUBSETS, ensemble_curve
from workers.fits import fit_curves
from workers.history import (
    SNAPSHOT_COLUMNS,
    TRAINING_COLUMNS,
    budget_warning,
    snapshot_rows,
    trace_columns,
    training_curve,
)
from workers.jamming_line import jamming_lines
from workers.reduce import (
    CURVE_COLUMNS,
    SERIES,
    WIDTH_KEY,
    ensemble_members,
    jamming,
    per_run_norm2,
    series_of,
    unfinished_width,
    width_curve,
    with_n_over_nstar,
    with_point,
)
from workers.sweep_reader import (
    ManifestRun,
    by_width,
    final_test_outputs,
    finished_width,
    manifest_runs,
    returning_memory,
    sweep_axes,
    trim_heap,
    width_traces,
)


@dataclass
class _Rows:
    """What the streaming pass collects, width by width."""

    curves: list[dict] = field(default_factory=list)
    ensemble: list[dict] = field(default_factory=list)
    training: list[dict] = field(default_factory=list)
    snapshots: list[dict] = field(default_factory=list)
    n_done: int = 0
    untraced: int = 0  # finished runs without a trace file
    set_aside: tuple[int, str] | None = None  # (runs, folder) whose files could not be read
    axes: list[str] = field(default_factory=list)  # the sweep's varying axes: typed columns


def reduce(
    sweep: str,
    *,
    results: str = RESULTS_DEFAULT,
    ensemble_over: EnsembleOver | str = EnsembleOver.CONVERGED,
    max_subsets: int | None = None,
    figures: bool = True,
) -> pd.DataFrame:
    """Write curves.parquet, ensemble.parquet, training.parquet, snapshots.parquet,
    summary.json and the figures from the finished runs; return the curves.

    Streams one width at a time: that width's final test outputs are filled run by run from
    the per-run Parquet files (pyarrow, only the rows and columns needed), reduced, and
    dropped before the next width is read; no table of every run's outputs is ever built.
    Every width of the manifest has a row of curves, finished or not (a width without a
    finished run is not jammed). `max_subsets` bounds the seed subsets averaged per n in
    ensemble.parquet.
    """
    if ensemble_over not in tuple(EnsembleOver):
        raise JamsweepError(f"ensemble_over must be 'converged' or 'all', not {ensemble_over!r}")
    ensemble_over = EnsembleOver(ensemble_over)
    subsets = max_subsets or MAX_SUBSETS
    layout = existing(sweep, results)
    runs = manifest_runs(layout)
    rows = _Rows(axes=sweep_axes(runs))
    _, broken = finished_and_broken(layout, runs)  # never read as results: set aside
    if broken:
        rows.set_aside = (len(broken), set_aside(layout, broken))
    present = set(io.list_files(layout.metrics_dir)) | set(io.list_files(layout.trace_dir))
    with returning_memory():
        for key, group in by_width(runs).items():
            _reduce_width(
                layout,
                dict(zip(WIDTH_KEY, key, strict=True)),
                group,
                present,
                ensemble_over,
                subsets,
                rows,
            )
            trim_heap()  # give the width's memory back before the next one is read
    if rows.n_done == 0:
        raise JamsweepError(
            f"sweep {sweep!r} has no finished run to reduce yet; see `jamsweep status {sweep}`"
        )
    curves, ensemble, training, snapshots = _reduced_tables(rows)
    summary, ensemble = _reduce_summary(
        sweep, len(runs), rows, curves, ensemble, ensemble_over, subsets, snapshots
    )
    for path, table in (
        (layout.curves, curves),
        (layout.ensemble, ensemble),
        (layout.training, training),
        (layout.snapshots, snapshots),
    ):
        io.write_table(path, pa.Table.from_pandas(table, preserve_index=False))
    io.write_text(layout.summary, summary.to_json())
    if figures:
        from orchestrator.results.plots import write_figures

        write_figures(layout, Reduced(summary, curves, ensemble, training, snapshots))
    return curves


def _reduce_width(
    layout: SweepLayout,
    key: dict,
    group: list[ManifestRun],
    present: set[str],
    ensemble_over: EnsembleOver,
    max_subsets: int,
    rows: _Rows,
) -> None:
    """One width's rows of every reduced table, appended to `rows`."""
    head = key | dict(group[0].axes) | {"n_params": group[0].n_params}
    max_steps = max(r.max_steps for r in group)
    n_runs = len(group)  # the width's runs in the manifest, finished or not
    done, metrics = finished_width(layout, group, present)
    if not done:
        rows.curves.append(
            head
            | {"n_runs": n_runs, "max_steps": max_steps, "n_late": 0, "n_still_falling": 0}
            | unfinished_width(group[0].n_params, 1)
        )
        return
    rows.n_done += len(done)
    outputs, snaps = final_test_outputs(layout, done, metrics)
    metrics = metrics.set_index("run_id").loc[outputs.run_ids].reset_index()
    traces = width_traces(layout, done, present)
    rows.untraced += sum(t is None for t in traces)
    steps, converged = metrics["steps"].astype(int).tolist(), metrics["converged"].tolist()
    row = head | {"n_runs": n_runs} | width_curve(metrics, outputs, ensemble_over=ensemble_over)
    rows.curves.append(row | trace_columns(traces, steps, converged, max_steps))
    members = ensemble_members(metrics, outputs.run_ids, ensemble_over)
    rows.ensemble += [head | r for r in ensemble_curve(outputs, members, max_subsets=max_subsets)]
    rows.training += [head | r for r in training_curve([t for t in traces if t is not None])]
    at = sorted({s for r in done for s in r.snapshot_steps})
    norms2 = per_run_norm2(outputs).tolist()
    rows.snapshots += [head | r for r in snapshot_rows(snaps, steps, norms2, at)]


def _reduced_tables(rows: _Rows) -> tuple[pd.DataFrame, ...]:
    """curves (with n_over_nstar), ensemble, training and snapshots frames, sorted by
    (series, N[, n or step])."""
    order = ["arch", *rows.axes, "point", "n_params", "width"]  # points in number order
    curves = pd.DataFrame(rows.curves, columns=with_axes(CURVE_COLUMNS, rows.axes))
    curves = curves.sort_values(order, kind="stable").reset_index(drop=True)
    # a width without a finished run has its series' number of outputs
    known = curves["n_outputs"].where(curves["n_seeds"] > 0)
    curves["n_outputs"] = known.groupby([curves[c] for c in SERIES]).transform("max").fillna(1)
    curves = curves.astype({"n_outputs": "int64", "n_seeds": "int64", "n_converged": "int64"})
    curves = with_n_over_nstar(curves, {a: j.n_star for a, j in jamming(curves).items()})

    def table(found: list[dict], columns: list[str], last: str) -> pd.DataFrame:
        frame = pd.DataFrame(found, columns=with_axes(columns, rows.axes))
        return frame.sort_values([*order, last], kind="stable").reset_index(drop=True)

    return (
        curves,
        table(rows.ensemble, ENSEMBLE_COLUMNS, "n"),
        table(rows.training, TRAINING_COLUMNS, "step"),
        table(rows.snapshots, SNAPSHOT_COLUMNS, "step"),
    )


def _reduce_summary(
    sweep: str,
    n_runs: int,
    rows: _Rows,
    curves: pd.DataFrame,
    ensemble: pd.DataFrame,
    ensemble_over: EnsembleOver,
    max_subsets: int,
    snapshots: pd.DataFrame,
) -> tuple[Summary, pd.DataFrame]:
    """summary.json: N* (every run, half the runs), the smallest jammed N where it differs
    from N*, the bracket of N*, the fits and their quality, the budget's warnings and the
    notes; and the ensemble table with the fitted excess_error_inf."""
    found = jamming(curves)
    by_series = dict(series_of(ensemble))
    fits, budget, parts = {}, {}, []
    for name, group in series_of(curves):
        n_star = found[name].n_star
        rows_e = by_series.get(name, ensemble.iloc[0:0])
        ens_fits = fit_ensembles(rows_e, n_star)
        fits[name] = fit_curves(group, n_star) | ens_fits
        parts.append(with_excess_inf(rows_e, ens_fits["ensemble_error"]))
        warning = budget_warning(group, found[name])
        if warning:
            budget[name] = warning
    summary = Summary(
        sweep=sweep,
        n_runs=n_runs,
        n_done=rows.n_done,
        ensemble_over=ensemble_over,
        max_subsets=max_subsets,
        n_star={a: j.n_star for a, j in found.items()},
        n_star_half={a: j.n_star_half for a, j in found.items()},
        n_star_bracket={a: j.bracket for a, j in found.items()},
        smallest_jammed_n={
            a: j.smallest_jammed for a, j in found.items() if j.smallest_jammed != j.n_star
        },
        fits=fits,
        jamming_line=jamming_lines(curves),
        reduced_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        budget=budget,
        notes=_notes(rows, curves, snapshots),
    )
    ensemble = pd.concat(parts, ignore_index=True) if parts else ensemble
    return summary, ensemble.reindex(columns=with_axes(ENSEMBLE_COLUMNS, rows.axes))


def with_axes(columns: list[str], axes: list[str]) -> list[str]:
    """A reduced table's columns with the sweep's varying axes after `point`."""
    at = columns.index("point") + 1 if "point" in columns else 1
    return [*columns[:at], *axes, *columns[at:]]


def _notes(rows: _Rows, curves: pd.DataFrame, snapshots: pd.DataFrame) -> list[str]:
    """What could not be computed, and why: said once, in the summary, not as an error."""
    notes = []
    finished = curves[curves["n_seeds"] > 0]
    missing = finished[finished["early_stop_error"].isna()]
    if len(missing) == len(finished):
        notes.append(
            "no early-stopping curve: the runs' traces have no test error (runs trained "
            "before jamsweep recorded it at the measurement steps); train them again to get it"
        )
    elif len(missing):
        shown = ", ".join(f"{n}" for n in missing["n_params"].head(6))
        notes.append(
            f"no early-stopping point at N = {shown}{' ...' if len(missing) > 6 else ''}: "
            "some of their runs' traces have no test error"
        )
    if rows.set_aside is not None:
        n, folder = rows.set_aside
        notes.append(
            f"{n} finished run(s) had result files that cannot be read: they were moved to "
            f"{folder} and count as unfinished; submit the grid again to train them again"
        )
    if rows.untraced:
        notes.append(
            f"{rows.untraced} finished run(s) have no trace file: they are left out of the "
            "training curves, and their loss at the end of the budget is not checked"
        )
    dead = finished[finished["n_dead"] > 0] if "n_dead" in finished else finished.iloc[:0]
    if len(dead):
        where = ", ".join(
            f"{n} of {k} at N = {N}{f' ({p})' if p else ''}"
            for n, k, N, p in with_point(dead)
            .head(6)[["n_dead", "n_seeds", "n_params", "point"]]
            .astype(str)
            .itertuples(index=False)
        )
        notes.append(
            f"dead nets (output constant: zero input gradient on every test point): {where}"
            f"{' ...' if len(dead) > 6 else ''}; they count in the means of their widths"
        )
    if snapshots.empty:
        notes.append(
            "no Fig. 7B: the runs stored no snapshots (the grid's training.snapshot_steps "
            "is empty, or every run had stopped by then)"
        )
    return notes
