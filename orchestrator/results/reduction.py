"""reduce / plot / report: a sweep's result files to curves.parquet, ensemble.parquet,
summary.json, the figures and the report. Streams one width at a time through
workers.sweep_reader; the numbers come from workers.reduce and workers.fits."""

from __future__ import annotations

import time

import pandas as pd
import pyarrow as pa

from orchestrator.results.store import existing
from schemas.errors import JamsweepError
from schemas.layout import RESULTS_DEFAULT, SweepLayout
from schemas.summary import EnsembleOver, Summary
from workers import io
from workers.reduce import jamming_points, width_curve
from workers.sweep_reader import (
    by_width,
    final_test_outputs,
    finished_width,
    manifest_runs,
    returning_memory,
    trim_heap,
)


def reduce(
    sweep: str,
    *,
    results: str = RESULTS_DEFAULT,
    ensemble_over: EnsembleOver | str = EnsembleOver.CONVERGED,
    max_subsets: int | None = None,
    figures: bool = True,
) -> pd.DataFrame:
    """Write curves.parquet, ensemble.parquet, summary.json and the figures from the finished
    runs; return the curves.

    Streams one width at a time: that width's final test outputs are filled run by run from
    the per-run Parquet files (pyarrow, only the rows and columns needed), reduced, and
    dropped before the next width is read; no table of every run's outputs is ever built.
    `max_subsets` bounds the seed subsets averaged per n in ensemble.parquet.
    """
    from workers.reduce import MAX_SUBSETS, ensemble_curve, ensemble_members

    if ensemble_over not in tuple(EnsembleOver):
        raise JamsweepError(f"ensemble_over must be 'converged' or 'all', not {ensemble_over!r}")
    ensemble_over = EnsembleOver(ensemble_over)
    layout = existing(sweep, results)
    runs = manifest_runs(layout)
    present = set(io.list_files(layout.metrics_dir))
    curve_rows: list[dict] = []
    ensemble_rows: list[dict] = []
    n_done = 0
    with returning_memory():
        for (arch, width), group in by_width(runs).items():
            n_runs = len(group)  # the width's runs in the manifest, finished or not
            group, metrics = finished_width(layout, group, present)
            if not group:
                continue
            n_done += len(group)
            outputs = final_test_outputs(layout, group, metrics)
            key = {"arch": arch, "width": width, "n_params": group[0].n_params, "n_runs": n_runs}
            curve_rows.append(key | width_curve(metrics, outputs, ensemble_over=ensemble_over))
            members = ensemble_members(metrics, outputs.run_ids, ensemble_over)
            ensemble_rows += [
                key | row
                for row in ensemble_curve(outputs, members, max_subsets=max_subsets or MAX_SUBSETS)
            ]
            del outputs
            trim_heap()  # give the width's memory back before the next one is read
    if not curve_rows:
        raise JamsweepError(
            f"sweep {sweep!r} has no finished run to reduce yet; see `jamsweep status {sweep}`"
        )
    curves, ensemble = _reduced_tables(curve_rows, ensemble_rows)
    summary = _reduce_summary(
        sweep, len(runs), n_done, curves, ensemble_over, max_subsets or MAX_SUBSETS
    )
    io.write_table(layout.curves, pa.Table.from_pandas(curves, preserve_index=False))
    io.write_table(layout.ensemble, pa.Table.from_pandas(ensemble, preserve_index=False))
    io.write_text(layout.summary, summary.to_json())
    if figures and len(curves):
        from orchestrator.results.plots import write_figures

        write_figures(layout, curves, ensemble, summary)
    return curves


def load_summary(sweep: str, *, results: str = RESULTS_DEFAULT) -> Summary:
    """summary.json of a reduced sweep."""
    layout = existing(sweep, results)
    if not io.exists(layout.summary):
        raise JamsweepError(
            f"sweep {sweep!r} has not been reduced yet: run `jamsweep reduce {sweep}` first"
        )
    return Summary.from_json(io.read_text(layout.summary), source=layout.summary)


def _reduced_tables(
    curve_rows: list[dict], ensemble_rows: list[dict]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """curves (with n_over_nstar) and ensemble frames, sorted by (arch, N[, n])."""
    from workers.reduce import CURVE_COLUMNS, ENSEMBLE_COLUMNS, with_n_over_nstar

    curves = pd.DataFrame(curve_rows, columns=CURVE_COLUMNS)
    curves = curves.sort_values(["arch", "n_params"], kind="stable").reset_index(drop=True)
    curves = with_n_over_nstar(curves, jamming_points(curves))
    ensemble = pd.DataFrame(ensemble_rows, columns=ENSEMBLE_COLUMNS)
    ensemble = ensemble.sort_values(["arch", "n_params", "n"], kind="stable").reset_index(drop=True)
    return curves, ensemble


def _reduce_summary(
    sweep: str,
    n_runs: int,
    n_done: int,
    curves: pd.DataFrame,
    ensemble_over: EnsembleOver,
    max_subsets: int,
) -> Summary:
    """summary.json: N* (every run, half the runs), the smallest jammed N where it differs
    from N*, the bracket of N*, and the fits per arch."""
    from workers.fits import fit_curves
    from workers.reduce import jamming

    found = jamming(curves)
    fits = {
        str(arch): fit_curves(group, found[str(arch)].n_star)
        for arch, group in curves.groupby("arch")
    }
    return Summary(
        sweep=sweep,
        n_runs=n_runs,
        n_done=n_done,
        ensemble_over=ensemble_over,
        max_subsets=max_subsets,
        n_star={a: j.n_star for a, j in found.items()},
        n_star_half={a: j.n_star_half for a, j in found.items()},
        n_star_bracket={a: j.bracket for a, j in found.items()},
        smallest_jammed_n={
            a: j.smallest_jammed for a, j in found.items() if j.smallest_jammed != j.n_star
        },
        fits=fits,
        reduced_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def _reduced(sweep: str, results: str) -> tuple[SweepLayout, pd.DataFrame, pd.DataFrame, Summary]:
    """The reducer's outputs of a sweep: layout, curves, ensemble, summary."""
    summary = load_summary(sweep, results=results)
    layout = existing(sweep, results)
    curves = io.read_table(layout.curves).to_pandas()
    ensemble = (
        io.read_table(layout.ensemble).to_pandas() if io.exists(layout.ensemble) else pd.DataFrame()
    )
    return layout, curves, ensemble, summary


def plot(sweep: str, *, results: str = RESULTS_DEFAULT) -> list[str]:
    """Draw the paper's figures from the reduced tables into figures/; return their paths."""
    from orchestrator.results.plots import write_figures

    layout, curves, ensemble, summary = _reduced(sweep, results)
    if curves.empty:
        raise JamsweepError(f"sweep {sweep!r} has no finished runs to plot yet")
    return write_figures(layout, curves, ensemble, summary)


def report(sweep: str, *, results: str = RESULTS_DEFAULT, output: str | None = None) -> str:
    """Write one self-contained HTML page (figures, curve table, fits); return its path."""
    from orchestrator.results.plots import render_figures, report_html

    layout, curves, ensemble, summary = _reduced(sweep, results)
    figures = render_figures(curves, ensemble, summary) if len(curves) else {}
    target = output or layout.report
    io.write_text(target, report_html(summary, curves, figures))
    return target
