"""The `jamsweep` command: parses, calls orchestrator.sweep, prints. JamsweepError is caught
once (in JamsweepGroup) and printed as one message, exit code 1, no traceback."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from orchestrator import sweep as api
from schemas.errors import JamsweepError
from schemas.layout import RESULTS_DEFAULT

# Wide enough for the tables when output goes to a file or a pipe (rich's default is 80).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)


class JamsweepGroup(TyperGroup):
    def invoke(self, ctx: Any) -> Any:  # typer's own (vendored) click.Context
        try:
            return super().invoke(ctx)
        except JamsweepError as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=JamsweepGroup,
    help="Sweeps of network width on Ray: train, track, reduce to the paper's curves.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Results = Annotated[str, typer.Option("--results", help="Results folder or URI.")]
Address = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster: auto, ray://HOST:10001 or http://HOST:8265."),
]


def _echo(line: str) -> None:
    err.print(line, soft_wrap=True)


@app.command()
def submit(
    grid: Annotated[str, typer.Argument(help="The grid file (YAML).")],
    address: Address = None,
    results: Annotated[
        str | None,
        typer.Option(
            "--results", help="Results folder or URI (default: the grid's, or ./results)."
        ),
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option("--num-cpus", help="CPUs of the embedded Ray (default: all).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and list the runs; write nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace a sweep of the same name that holds another grid "
            "(its folder is moved aside, not deleted).",
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--detach",
            help="With an http:// address: follow the sweep "
            "until it ends, or return at once with the Ray job id.",
        ),
    ] = True,
    shared_fs: Annotated[
        bool,
        typer.Option(
            "--shared-fs",
            help="With an http:// address: the absolute --results folder and dataset root "
            "are on a filesystem every cluster node mounts at the same path.",
        ),
    ] = False,
) -> None:
    """Run every run of GRID that has not finished yet, then reduce."""
    report = api.submit(
        grid,
        address=address,
        results=results,
        num_cpus=num_cpus,
        dry_run=dry_run,
        force=force,
        detach=not wait,
        shared_fs=shared_fs,
        echo=_echo,
    )
    if report.job_id is not None and not report.dry_run:
        out.print(
            f"sweep {report.sweep}: Ray job {report.job_id} is {report.job_state}. "
            f"Results in {report.results}/{report.sweep}"
        )
        if not report.ok:
            raise typer.Exit(1)
        return
    if report.dry_run:
        out.print(
            f"sweep {report.sweep}: {report.n_runs} runs, {report.n_already_done} done, "
            f"{len(report.planned)} would run:"
        )
        _print_planned(report.planned)
        return
    assert report.status is not None
    if report.curves is not None:
        _print_curves(report.curves)
    counts = ", ".join(f"{n} {s}" for s, n in report.status.counts.items() if n)
    out.print(f"sweep {report.sweep}: {counts}. Results in {report.results}/{report.sweep}")
    if not report.ok:
        if report.status.counts["cancelled"]:
            err.print(f"sweep {report.sweep}: {report.status.counts['cancelled']} run(s) cancelled")
        _print_failed(report.status.failed)
        raise typer.Exit(1)


@app.command()
def status(
    sweep: Annotated[str | None, typer.Argument(help="Sweep name (default: every sweep).")] = None,
    results: Results = RESULTS_DEFAULT,
    address: Address = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Refresh every 2 s while a driver is at work on it."),
    ] = False,
) -> None:
    """What is pending / running / done / failed / cancelled / interrupted (was running when
    its driver or cluster went away; submit the grid again to resume it)."""
    if sweep is None:
        for st in api.ls(results):
            _print_counts(st)
        return
    while True:
        st = api.status(sweep, results=results, address=address)
        if as_json:
            out.print_json(json.dumps(st.to_json()))
        else:
            if watch:
                out.clear()
            _print_counts(st)
            _print_runs(st)
        if not watch or not st.alive or not any(r.state.is_active() for r in st.records):
            return
        time.sleep(2)


@app.command()
def cancel(
    sweep: Annotated[str, typer.Argument(help="Sweep name.")],
    results: Results = RESULTS_DEFAULT,
    address: Annotated[
        str, typer.Option("--address", help="The cluster running the sweep.")
    ] = "auto",
) -> None:
    """Stop pending and running runs of SWEEP; they are recorded as cancelled."""
    ids = api.cancel(sweep, results=results, address=address)
    for run_id in ids:
        out.print(f"cancelled run {run_id}")
    out.print(f"sweep {sweep}: cancelled {len(ids)} run(s)")


@app.command()
def reduce(
    sweep: Annotated[str, typer.Argument(help="Sweep name.")],
    results: Results = RESULTS_DEFAULT,
    ensemble_over: Annotated[
        str, typer.Option("--ensemble-over", help="Seeds averaged into f_bar: converged or all.")
    ] = "converged",
    max_subsets: Annotated[
        int,
        typer.Option(
            "--max-subsets",
            min=1,
            help="Seed subsets averaged per n in ensemble.parquet (all if fewer).",
        ),
    ] = 64,
    figures: Annotated[
        bool, typer.Option("--figures/--no-figures", help="Also draw figures/*.png.")
    ] = True,
) -> None:
    """Write curves.parquet, ensemble.parquet, summary.json and the figures."""
    if ensemble_over not in ("converged", "all"):
        raise JamsweepError(f"--ensemble-over must be 'converged' or 'all', not {ensemble_over!r}")
    curves = api.reduce(
        sweep,
        results=results,
        ensemble_over=ensemble_over,  # type: ignore[arg-type]
        max_subsets=max_subsets,
        figures=figures,
    )
    _print_curves(curves)
    _print_summary(api.load_summary(sweep, results=results))


@app.command()
def plot(
    sweep: Annotated[str, typer.Argument(help="Sweep name (reduced).")],
    results: Results = RESULTS_DEFAULT,
) -> None:
    """Draw the paper's figures (figures/*.png) from the reduced tables."""
    for path in api.plot(sweep, results=results):
        out.print(path)


@app.command()
def report(
    sweep: Annotated[str, typer.Argument(help="Sweep name (reduced).")],
    results: Results = RESULTS_DEFAULT,
    output: Annotated[
        str | None, typer.Option("--output", help="Where to write (default: SWEEP/report.html).")
    ] = None,
) -> None:
    """Write one self-contained HTML page: figures, curve table, fitted numbers."""
    out.print(api.report(sweep, results=results, output=output))


@app.command()
def refine(
    sweep: Annotated[str, typer.Argument(help="Sweep name.")],
    results: Results = RESULTS_DEFAULT,
    address: Address = None,
    n_widths: Annotated[
        int, typer.Option("--n-widths", min=1, help="Widths to add inside the bracket of N*.")
    ] = 1,
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds", min=1, help="Seeds 0..S-1 at each new width (default: the sweep's)."
        ),
    ] = None,
    arch: Annotated[
        str | None, typer.Option("--arch", help="Refine this architecture only (default: all).")
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option("--num-cpus", help="CPUs of the embedded Ray (default: all).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the new runs; run nothing.")
    ] = False,
) -> None:
    """Add widths between the two that bracket N*, run them into SWEEP, and reduce."""
    rep = api.refine(
        sweep,
        results=results,
        n_widths=n_widths,
        seeds=seeds,
        arch=arch,
        address=address,
        num_cpus=num_cpus,
        dry_run=dry_run,
        echo=_echo,
    )
    if dry_run:
        out.print(f"sweep {sweep}: {len(rep.planned)} run(s) would be added:")
        _print_planned(rep.planned)
        return
    if rep.curves is not None:
        _print_curves(rep.curves)
        _print_summary(api.load_summary(sweep, results=results))
    if rep.status is not None and rep.status.failed:
        _print_failed(rep.status.failed)
        raise typer.Exit(1)


def _print_planned(specs: list) -> None:
    for s in specs:
        w = f"{api.width_symbol(s.arch.kind)}={s.width:g}"
        out.print(f"  {s.run_id}  {s.arch.name}  {w}  seed={s.seed}  N={s.n_params}")


def _print_failed(records: list) -> None:
    for r in records:
        what = f"{r.arch} width={r.width:g} seed={r.seed} ({r.run_id})"
        err.print(f"failed: {what}: {r.error}", soft_wrap=True)


def _print_summary(summary: dict) -> None:
    """N* (all seeds / half the seeds) and the fitted numbers of every architecture."""
    for arch, n_star in summary["n_star"].items():
        half = summary.get("n_star_half", {}).get(arch)
        half_text = f"{half:.1f}" if half is not None else "-"
        smallest = summary.get("smallest_jammed_n", {}).get(arch)
        smallest_text = f"; smallest jammed N = {smallest}" if smallest is not None else ""
        out.print(
            f"{arch}: N* = {n_star if n_star is not None else '-'} (every run, at every larger "
            f"width too), {half_text} (half the runs){smallest_text}"
        )
        for name, fit in summary.get("fits", {}).get(arch, {}).items():
            if fit.get("reason"):
                out.print(f"  fit {name}: none ({fit['reason']})")
                continue
            values = ", ".join(
                f"{k} = {v:.4g} ± {fit['errors'][k]:.2g}" for k, v in fit["params"].items()
            )
            out.print(f"  fit {name}: {fit['law']}: {values}")


@app.command("ls")
def list_sweeps(results: Results = RESULTS_DEFAULT) -> None:
    """List the sweeps under the results folder."""
    sweeps = api.ls(results)
    if not sweeps:
        out.print(f"no sweeps under {results}")
    for st in sweeps:
        _print_counts(st)


def _print_counts(st: api.SweepStatus) -> None:
    counts = "  ".join(f"{s} {n}" for s, n in st.counts.items())
    out.print(f"{st.sweep}: {counts}  ({len(st.records)} runs, {st.source})")


def _print_runs(st: api.SweepStatus) -> None:
    table = Table("run_id", "arch", "width", "seed", "N", "state", "attempts", "node", "error")
    for r in sorted(st.records, key=lambda r: (r.arch, r.width, r.seed)):
        table.add_row(
            r.run_id,
            r.arch,
            f"{r.width:g}",
            str(r.seed),
            str(r.n_params),
            r.state.value,
            str(r.attempts),
            r.node or "",
            (r.error or "")[:60],
        )
    out.print(table)


def _print_curves(curves: pd.DataFrame) -> None:
    if curves.empty:
        out.print("no finished runs to reduce yet")
        return
    table = Table(
        "arch",
        "width",
        "N",
        "seeds",
        "converged",
        "test err",
        "± std",
        "ensemble err",
        "train loss",
    )
    for r in curves.itertuples():
        table.add_row(
            str(r.arch),
            f"{r.width:g}",
            str(r.n_params),
            str(r.n_seeds),
            str(r.n_converged),
            f"{r.test_error_mean:.4f}",
            f"{r.test_error_std:.4f}",
            f"{r.ens_test_error:.4f}",
            f"{r.train_loss_mean:.2e}",
        )
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
