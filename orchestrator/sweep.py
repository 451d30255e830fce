"""The typed API the CLI calls and a notebook user can call directly: submit, status,
cancel, ls, refine, reduce, plot, compare, report. Each picks its executor once from the address
(orchestrator.cluster.executors); reduce, plot and report only read and write files. No ray here:
the cluster is behind `orchestrator.cluster.backend`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.cluster.executors import executor_for, is_jobs_address
from orchestrator.cluster.progress import ProgressHook
from orchestrator.reports import Echo, RefineReport, SubmitReport, SweepStatus, quiet, width_symbol
from orchestrator.results.reduced import load_summary
from orchestrator.results.reduction import reduce
from orchestrator.results.store import sweep_names
from schemas.axes import DEFAULT_MAX_RUNS
from schemas.errors import JamsweepError
from schemas.grid import GridSpec, load_grid
from schemas.layout import RESULTS_DEFAULT
from workers import io

if TYPE_CHECKING:
    from orchestrator.results.plots import Plotted

FIGURE_DPI = 110  # orchestrator.results.figures.style.DPI (matplotlib is imported only to draw)

__all__ = [
    "RefineReport",
    "is_jobs_address",
    "SubmitReport",
    "SweepStatus",
    "cancel",
    "compare",
    "load_summary",
    "ls",
    "plot",
    "reduce",
    "refine",
    "report",
    "status",
    "submit",
    "watch",
    "width_symbol",
]


def submit(
    grid: str | Path,
    *,
    address: str | None = None,
    results: str | None = None,
    num_cpus: int | None = None,
    dry_run: bool = False,
    force: bool = False,
    detach: bool = False,
    shared_fs: bool = False,
    echo: Echo = quiet,
    progress: ProgressHook | None = None,
    max_runs: int = DEFAULT_MAX_RUNS,
) -> SubmitReport:
    """Run every run of the grid that has not finished yet; reduce when all are done.

    Everything is checked (grid, data, results location, sweep name, cluster and its
    resources) before anything is written. A sweep grows: runs the grid names that
    finished before are kept, new ones run. With an http(s):// address the sweep is handed
    to the cluster as a Ray job and goes on without this process; its paths must then be
    ones every node sees (`shared_fs` declares an absolute path so). `progress`, if given,
    receives the round's counts about once a second (a Ray job reports through `echo`).
    A grid whose product (architectures x points x widths x seeds) is over `max_runs` is
    refused before anything else, dry run or not.
    """
    spec, text = load_grid(grid)
    refuse_large(spec, max_runs)
    executor = executor_for(address, num_cpus=num_cpus, shared_fs=shared_fs)
    report = executor.submit(
        grid,
        spec,
        text,
        results=results,
        force=force,
        dry_run=dry_run,
        detach=detach,
        echo=echo,
        progress=progress,
    )
    report.product = product_text(spec)
    report.axis_names = list(spec.axes)
    return report


def product_text(spec: GridSpec) -> str:
    """'2 widths x 3 points (train_size: 250, 500, 1000) x 4 seeds = 24 runs'."""
    widths = sum(len(a.widths) for a in spec.architectures)
    parts = [
        f"{widths} width(s)"
        + (f" of {len(spec.architectures)} architectures" if len(spec.architectures) > 1 else "")
    ]
    axes = spec.axes
    if axes:
        listed = "; ".join(
            f"{k}: {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vs)}"
            for k, vs in axes.items()
        )
        parts.append(f"{len(spec.points)} point(s) ({listed})")
    parts.append(f"{len(spec.seed_list)} seed(s)")
    return " x ".join(parts) + f" = {spec.n_runs} runs"


def refuse_large(spec: GridSpec, max_runs: int) -> None:
    if spec.n_runs > max_runs:
        raise JamsweepError(
            f"grid {spec.sweep!r} makes {spec.n_runs} runs ({product_text(spec)}), more than "
            f"--max-runs {max_runs}; shorten a list, or raise the limit with --max-runs "
            f"{spec.n_runs} if you mean it"
        )


def status(
    sweep: str,
    *,
    results: str = RESULTS_DEFAULT,
    address: str | None = None,
    where: dict[str, list[str]] | None = None,
) -> SweepStatus:
    """Live from the sweep's tracker when `address` names a cluster that has one; else from
    the persisted status.parquet, corrected by the result files and the round's heartbeat.
    `where`: only the runs whose columns have those values (NAME -> values as text: arch,
    width, seed or any sweep axis, e.g. {"train_size": ["1000"]}), selected where the
    manifest is (on the cluster, for a Jobs API address)."""
    return executor_for(address).status(sweep, results, where)


def watch(
    sweep: str, *, results: str = RESULTS_DEFAULT, address: str | None = None, every_s: float = 2.0
) -> Iterator[SweepStatus]:
    """The sweep's status every `every_s` seconds until its round ends (the last one
    included), through one connection to the cluster (or one Ray job for an http://
    address) for the whole watch."""
    return executor_for(address).watch(sweep, results, every_s)


def cancel(sweep: str, *, results: str = RESULTS_DEFAULT, address: str = "auto") -> list[str]:
    """Ask the live tracker to cancel every unfinished run; returns their ids."""
    return executor_for(address).cancel(sweep, results)


def ls(results: str = RESULTS_DEFAULT) -> list[SweepStatus]:
    """Every sweep under `results`, with its persisted status. A location that does not
    exist is an error (a mistyped --results is not an empty one)."""
    if not io.exists(results):
        raise JamsweepError(
            f"results location {results!r} does not exist; give the folder (or URI) that "
            "holds the sweeps with --results, or set $JAMSWEEP_RESULTS"
        )
    return [status(name, results=results) for name in sweep_names(results)]


def refine(
    sweep: str,
    *,
    results: str = RESULTS_DEFAULT,
    n_widths: int = 1,
    seeds: int | None = None,
    arch: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    dry_run: bool = False,
    echo: Echo = quiet,
    progress: ProgressHook | None = None,
) -> RefineReport:
    """Add `n_widths` widths inside the bracket of N* of each architecture (or `arch`), with
    seeds 0..seeds-1 (default: the sweep's), run them into the same sweep, and reduce."""
    return executor_for(address, num_cpus=num_cpus).refine(
        sweep,
        results,
        echo=echo,
        n_widths=n_widths,
        seeds=seeds,
        arch=arch,
        dry_run=dry_run,
        progress=progress,
    )


def plot(
    sweep: str, *, results: str = RESULTS_DEFAULT, fmt: str = "png", dpi: int = FIGURE_DPI
) -> Plotted:
    """Draw the paper's figures of a reduced sweep into SWEEP/figures/NAME.FMT (png, pdf or
    svg); returns the paths written and the figures not drawn, with why."""
    from orchestrator.results.plots import plot as draw

    return draw(sweep, results=results, fmt=fmt, dpi=dpi)


def compare(
    sweeps: Sequence[tuple[str, str]],
    *,
    output: str | None = None,
    fmt: str = "png",
    dpi: int = FIGURE_DPI,
) -> Plotted:
    """Overlay several reduced sweeps, each (results, sweep), on one figure labelled by
    what their grids change; written to `output`, else the first sweep's
    figures/compare_A_B.FMT. Returns the path written."""
    from orchestrator.results.plots import compare as overlay

    return overlay(sweeps, output=output, fmt=fmt, dpi=dpi)


def report(sweep: str, *, results: str = RESULTS_DEFAULT, output: str | None = None) -> str:
    """Write one self-contained HTML page (warnings, N*, fits with their quality, figures,
    curve table); return its path (default SWEEP/report.html)."""
    from orchestrator.results.report import report as write

    return write(sweep, results=results, output=output)
