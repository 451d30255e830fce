"""The `jamsweep` command: parses, calls the typed API (orchestrator.sweep, .overview,
.starter), prints through orchestrator.cli.console. JamsweepError is caught once (in
JamsweepGroup) and printed as one message, exit code 1, no traceback.

Every command that names a sweep takes it by name (looked up under --results, default
$JAMSWEEP_RESULTS, else ./results) or as the path RESULTS/SWEEP. --address means the same
everywhere: the cluster to use; none = this machine. Options that do not apply to what was
asked are refused, not ignored."""

from __future__ import annotations

import json
import signal
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from orchestrator import sweep as api
from orchestrator.cli import console as show_
from orchestrator.cli import reading
from orchestrator.cli.console import err, out
from orchestrator.cli.options import (
    Address,
    NumCpus,
    Results,
    Sweep,
    Where,
    refuse,
    states_of,
    sweep_path,
    unused_options,
    unused_status_options,
    where_of,
)
from orchestrator.cli.overview import locate, run_detail
from schemas.axes import DEFAULT_MAX_RUNS
from schemas.errors import JamsweepError
from schemas.layout import default_results
from schemas.run import RunStatus


class JamsweepGroup(TyperGroup):
    def invoke(self, ctx: Any) -> Any:  # typer's own (vendored) click.Context
        # SIGTERM (`ray job stop`, `kill`, a scheduler's end of job) ends a driver as Ctrl-C
        # does: its running runs are recorded interrupted, its tracker and lease released.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            return super().invoke(ctx)
        except JamsweepError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


app = typer.Typer(
    cls=JamsweepGroup,
    help="Sweeps of network width on Ray: train, track, reduce to the paper's curves.",
    epilog="Example: jamsweep init --dataset digits && jamsweep submit grid.yaml",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        out.print(f"jamsweep {version()}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version, exit."
        ),
    ] = False,
) -> None:
    """Sweeps of network width on Ray: train, track, reduce to the paper's curves."""


def version() -> str:
    """The installed distribution's version (pyproject.toml's)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("jamsweep")
    except PackageNotFoundError:  # run from a clone without `pip install`
        return "unknown (not installed: pip install -e .)"


@app.command(
    epilog="Examples:\n\n"
    "jamsweep submit examples/demo.yaml\n\n"
    "jamsweep submit grid.yaml --address http://head:8265 --detach"
)
def submit(
    grid: Annotated[str, typer.Argument(help="The grid file (YAML).")],
    address: Address = None,
    results: Annotated[
        str | None,
        typer.Option(
            "--results",
            help="Results folder or URI (default: the grid's, else $JAMSWEEP_RESULTS, "
            "else ./results).",
        ),
    ] = None,
    num_cpus: NumCpus = None,
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
            help="With an http:// address: follow the sweep until it ends, or return at once "
            "with the Ray job id.",
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
    max_runs: Annotated[
        int,
        typer.Option(
            "--max-runs",
            min=1,
            help="Refuse a grid whose product of lists, widths and seeds makes more runs.",
        ),
    ] = DEFAULT_MAX_RUNS,
) -> None:
    """Run every run of GRID that has not finished yet, then reduce."""
    refuse(unused_options(address=address, num_cpus=num_cpus, detach=not wait, shared_fs=shared_fs))
    with show_.SubmitProgress(err) as bar:
        report = api.submit(
            grid,
            address=address,
            results=results,
            num_cpus=num_cpus,
            dry_run=dry_run,
            force=force,
            detach=not wait,
            shared_fs=shared_fs,
            echo=bar.echo,
            progress=bar.update,
            max_runs=max_runs,
        )
    if report.dry_run:
        show_.print_dry_run(report, sweep_path(report.results, report.sweep))
        return
    where = sweep_path(report.results, report.sweep)
    if report.job_id is not None:
        out.print(f"sweep {report.sweep}: Ray job {report.job_id} is {report.job_state}.")
    else:
        assert report.status is not None
        if report.curves is not None:
            show_.print_curves(report.curves)
        counts = ", ".join(f"{n} {s}" for s, n in report.status.counts.items() if n)
        out.print(f"sweep {report.sweep}: {counts}.")
    out.print(f"Results in {where}. Next:", soft_wrap=True)
    on_cluster = f" --address {address}" if address is not None else ""
    out.print(f"  jamsweep status {where}{on_cluster}", soft_wrap=True)
    out.print(f"  jamsweep reduce {where}", soft_wrap=True)
    if not report.ok:
        if report.status is not None:
            if report.status.counts["cancelled"]:
                n = report.status.counts["cancelled"]
                err.print(f"sweep {report.sweep}: {n} run(s) cancelled")
            show_.print_failed(report.status.failed)
        raise typer.Exit(1)


@app.command(
    epilog="Examples:\n\n"
    "jamsweep status results/demo --state failed\n\n"
    "jamsweep status demo --run 3f2a\n\n"
    "jamsweep status demo --watch"
)
def status(
    sweep: Annotated[
        str | None, typer.Argument(help="Sweep name or RESULTS/SWEEP (default: every sweep).")
    ] = None,
    results: Results = None,
    address: Address = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (with --watch: one per line).")
    ] = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Redraw in place every 2 s while a driver is at work on it."),
    ] = False,
    every: Annotated[
        float, typer.Option("--every", min=0.2, help="Seconds between looks of --watch.")
    ] = 2.0,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            help="List only the runs in this state (repeat, or comma-separate): "
            + ", ".join(s.value for s in RunStatus)
            + ".",
        ),
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            "--run", help="Show one run (its id or a unique prefix): record, error, trace tail."
        ),
    ] = None,
    where: Where = None,
) -> None:
    """What is pending / running / done / failed / cancelled / interrupted (was running when
    its driver or cluster went away; submit the grid again to resume it)."""
    states = states_of(state)
    selected = where_of(where)
    refuse(unused_status_options(sweep=sweep, watch=watch, as_json=as_json, states=states, run=run))
    if selected is not None and (sweep is None or run is not None or watch):
        raise JamsweepError("--where selects runs of one SWEEP: give it, without --run or --watch")
    if sweep is None:
        for st in api.ls(results or default_results()):
            out.print(show_.counts_line(st), soft_wrap=True)
        return
    results, sweep = locate(sweep, results)
    if run is not None:
        detail = run_detail(sweep, run, results=results, address=address)
        if as_json:
            out.print_json(json.dumps(detail.record.model_dump(mode="json")))
        else:
            show_.print_run(detail)
        return
    if watch:
        looks = api.watch(sweep, results=results, address=address, every_s=every)
        if as_json:  # JSON lines: one object per look, until the round ends
            for st in looks:
                print(json.dumps(_answer(st, states)), flush=True)
        else:
            show_.watch(looks, lambda s: show_.status_view(s, states))
        return
    st = api.status(sweep, results=results, address=address, where=selected)
    if as_json:
        out.print_json(json.dumps(_answer(st, states)))
        return
    out.print(show_.status_view(st, states))


def _answer(st: api.SweepStatus, states: set[str] | None) -> dict:
    answer = st.to_json()
    if states is not None:
        answer["runs"] = [r for r in answer["runs"] if r["state"] in states]
    return answer


@app.command(epilog="Example: jamsweep cancel demo --address auto")
def cancel(sweep: Sweep, results: Results = None, address: Address = None) -> None:
    """Stop pending and running runs of SWEEP; they are recorded as cancelled. With no
    --address: the Ray started on this machine (`ray start`, as --address auto)."""
    results, sweep = locate(sweep, results)
    try:
        ids = api.cancel(sweep, results=results, address=address or "auto")
    except JamsweepError as exc:
        if address is not None:
            raise
        raise JamsweepError(
            f"{exc}. With no --address, cancel looks for the Ray started on this machine "
            "(`ray start`); a sweep submitted without --address runs in its own Ray inside "
            "`jamsweep submit`: stop it with Ctrl-C there (its runs are recorded interrupted "
            "and resume when the grid is submitted again)"
        ) from None
    for run_id in ids:
        out.print(f"cancelled run {run_id}")
    out.print(f"sweep {sweep}: cancelled {len(ids)} run(s)")


@app.command(epilog="Example: jamsweep refine results/demo --n-widths 2 --dry-run")
def refine(
    sweep: Sweep,
    results: Results = None,
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
    num_cpus: NumCpus = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the new runs; run nothing.")
    ] = False,
) -> None:
    """Add widths between the two that bracket N*, run them into SWEEP, and reduce."""
    refuse(unused_options(address=address, num_cpus=num_cpus, jobs=False))
    results, sweep = locate(sweep, results)
    with show_.SubmitProgress(err) as bar:
        rep = api.refine(
            sweep,
            results=results,
            n_widths=n_widths,
            seeds=seeds,
            arch=arch,
            address=address,
            num_cpus=num_cpus,
            dry_run=dry_run,
            echo=bar.echo,
            progress=bar.update,
        )
    if dry_run:
        out.print(f"sweep {sweep}: {len(rep.planned)} run(s) would be added:")
        show_.print_planned(rep.planned, rep.axis_names)
        return
    if rep.curves is not None:
        show_.print_curves(rep.curves)
        show_.print_summary(api.load_summary(sweep, results=results))
    if rep.status is not None and rep.status.failed:
        show_.print_failed(rep.status.failed)
        raise typer.Exit(1)


for _function, _options_of in reading.COMMANDS:  # reduce, plot, report, show, ls, init
    app.command(**_options_of)(_function)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
