"""The `jamsweep` commands that only read and write a sweep's files (no cluster, no
--address): reduce, plot, report, show, ls, init. Registered on the app by
orchestrator.cli.app, which owns the command group."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Annotated, Any

import typer

from orchestrator import sweep as api
from orchestrator.cli import console as show_
from orchestrator.cli.console import err, out
from orchestrator.cli.options import Results, Sweep
from orchestrator.cli.overview import locate, overview
from orchestrator.cli.starter import StarterDataset, write_starter
from schemas.errors import JamsweepError
from schemas.layout import default_results
from schemas.summary import EnsembleOver

COMMANDS: list[tuple[Callable[..., Any], dict[str, Any]]] = []  # (function, typer options)


def command(name: str | None = None, **options: Any) -> Callable[[Callable], Callable]:
    """Record a command for orchestrator.cli.app to register (as `app.command` would)."""

    def record(function: Callable) -> Callable:
        COMMANDS.append((function, {"name": name, **options}))
        return function

    return record


class FigureFormat(str, enum.Enum):
    PNG = "png"
    PDF = "pdf"
    SVG = "svg"


@command(epilog="Example: jamsweep reduce results/demo --ensemble-over all")
def reduce(
    sweep: Sweep,
    results: Results = None,
    ensemble_over: Annotated[
        EnsembleOver, typer.Option("--ensemble-over", help="Seeds averaged into f_bar.")
    ] = EnsembleOver.CONVERGED,
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
    """Write curves.parquet, ensemble.parquet, training.parquet, snapshots.parquet,
    summary.json and the figures; print the curves, N*, the fits and any warning."""
    results, sweep = locate(sweep, results)
    curves = api.reduce(
        sweep,
        results=results,
        ensemble_over=ensemble_over,
        max_subsets=max_subsets,
        figures=figures,
    )
    show_.print_curves(curves)
    show_.print_summary(api.load_summary(sweep, results=results))


@command(
    epilog="Examples:\n\n"
    "jamsweep plot results/demo --format pdf --dpi 300\n\n"
    "jamsweep plot results/lr1 results/lr3   # one figure overlaying both sweeps"
)
def plot(
    sweeps: Annotated[
        list[str], typer.Argument(help="Sweep names or paths RESULTS/SWEEP; two or more overlay.")
    ],
    results: Results = None,
    fmt: Annotated[
        FigureFormat, typer.Option("--format", help="File format of the figures.")
    ] = FigureFormat.PNG,
    dpi: Annotated[
        int, typer.Option("--dpi", min=20, max=1200, help="Resolution (png; pdf/svg images).")
    ] = api.FIGURE_DPI,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            help="With several sweeps: the comparison's file (default: the first sweep's "
            "figures/compare_A_B.FORMAT).",
        ),
    ] = None,
) -> None:
    """Draw the paper's figures (SWEEP/figures/*.FORMAT) from the reduced tables, or, for
    several sweeps, one figure that overlays their curves."""
    located = [locate(s, results) for s in sweeps]
    if len(located) == 1:
        if output is not None:
            raise JamsweepError(
                "--output names the file of a comparison of several sweeps; one sweep's "
                "figures go to its figures/ folder"
            )
        ((where, name),) = located
        done = api.plot(name, results=where, fmt=fmt.value, dpi=dpi)
    else:
        done = api.compare(located, output=output, fmt=fmt.value, dpi=dpi)
    for path in done.paths:
        out.print(path, soft_wrap=True)
    for name, why in done.missing.items():
        err.print(f"not drawn: {name}: {why}", soft_wrap=True)


@command(epilog="Example: jamsweep report demo --output demo.html")
def report(
    sweep: Sweep,
    results: Results = None,
    output: Annotated[
        str | None, typer.Option("--output", help="Where to write (default: SWEEP/report.html).")
    ] = None,
) -> None:
    """Write one self-contained HTML page: warnings, N*, every fit with its quality and
    flags, the figures, the curve table."""
    results, sweep = locate(sweep, results)
    out.print(api.report(sweep, results=results, output=output), soft_wrap=True)


@command("ls", epilog="Example: JAMSWEEP_RESULTS=/data/sweeps jamsweep ls")
def list_sweeps(results: Results = None) -> None:
    """List the sweeps under the results folder."""
    where = results or default_results()
    sweeps = api.ls(where)
    if not sweeps:
        out.print(f"no sweeps under {where}")
    for st in sweeps:
        out.print(show_.counts_line(st), soft_wrap=True)


@command(
    epilog="Examples:\n\n"
    "jamsweep init mnist.yaml --dataset mnist --root ../shared/data\n\n"
    "jamsweep submit mnist.yaml --dry-run"
)
def init(
    file: Annotated[str, typer.Argument(help="The grid file to write.")] = "grid.yaml",
    dataset: Annotated[
        StarterDataset, typer.Option("--dataset", help="The dataset of the starter grid.")
    ] = StarterDataset.DIGITS,
    root: Annotated[
        str | None,
        typer.Option(
            "--root",
            help="mnist: the folder holding MNIST/raw; cifar10: the folder holding train/ and "
            "test/ (default: ./data, ./data/cifar10-jpeg).",
        ),
    ] = None,
    sweep: Annotated[
        str | None, typer.Option("--sweep", help="The sweep's name (default: FILE's stem).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE if it exists.")] = False,
) -> None:
    """Write a commented starter grid for DATASET to FILE."""
    write_starter(file, dataset=dataset.value, sweep=sweep, root=root, force=force)
    out.print(f"wrote {file}; check it with: jamsweep submit {file} --dry-run", soft_wrap=True)


@command(epilog="Example: jamsweep show results/demo")
def show(sweep: Sweep, results: Results = None) -> None:
    """Print SWEEP's grid, run counts, the curve table, N*, the fits with their quality,
    warnings, and where its figures and report are."""
    results, sweep = locate(sweep, results)
    show_.print_overview(overview(sweep, results=results))
