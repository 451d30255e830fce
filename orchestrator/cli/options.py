"""The options and rules that the `jamsweep` commands share: how a sweep, a results
location and a cluster are named, and which options a command refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cluster.executors import is_jobs_address
from schemas.errors import JamsweepError
from schemas.run import RunStatus

Sweep = Annotated[str, typer.Argument(help="Sweep name, or its path RESULTS/SWEEP.")]
Results = Annotated[
    str | None,
    typer.Option(
        "--results", help="Results folder or URI (default: $JAMSWEEP_RESULTS, else ./results)."
    ),
]
Address = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The cluster to use: auto (the Ray started on this machine), ray://HOST:10001 "
        "or http://HOST:8265 (Ray Jobs); none = this machine.",
    ),
]
NumCpus = Annotated[
    int | None,
    typer.Option("--num-cpus", min=1, help="CPUs of this machine's Ray (no --address only)."),
]


def refuse(problems: list[str]) -> None:
    if problems:
        raise JamsweepError("; ".join(problems))


def sweep_path(results: str, sweep: str) -> str:
    """RESULTS/SWEEP as a user would type it: relative to the current folder when inside it."""
    root = f"{results.rstrip('/')}/{sweep}"
    if "://" in root:
        return root
    try:
        return str(Path(root).absolute().relative_to(Path.cwd()))
    except (ValueError, OSError):  # elsewhere, or no current folder (it was removed)
        return root


def states_of(given: list[str] | None) -> set[str] | None:
    """--state's names (a typer enum would not take "failed,done")."""
    if not given:
        return None
    names = {n.strip() for g in given for n in g.split(",") if n.strip()}
    known = {s.value for s in RunStatus}
    unknown = sorted(names - known)
    if unknown:
        raise JamsweepError(
            f"--state {', '.join(unknown)}: no such state; states are {', '.join(sorted(known))}"
        )
    return names


def unused_options(
    *,
    address: str | None,
    num_cpus: int | None = None,
    detach: bool = False,
    shared_fs: bool = False,
    jobs: bool = True,
) -> list[str]:
    """The options of a command that runs a sweep which do not apply to `address`."""
    problems = []
    on_jobs = is_jobs_address(address)
    if detach and not on_jobs:
        problems.append("--detach needs an http:// address (a Ray job): with none it runs here")
    if shared_fs and not on_jobs:
        problems.append("--shared-fs needs an http:// address (a Ray job)")
    if num_cpus is not None and address is not None:
        problems.append(f"--num-cpus applies to this machine's Ray, not to the cluster {address}")
    if on_jobs and not jobs:
        problems.append(
            "this command drives its runs from this process: give the cluster as auto or "
            "ray://HOST:10001, or run it on the cluster's head"
        )
    return problems


def unused_status_options(
    *, sweep: str | None, watch: bool, as_json: bool, states: set[str] | None, run: str | None
) -> list[str]:
    problems = [
        f"{opt} needs a SWEEP"
        for opt, given in (("--watch", watch), ("--state", states), ("--run", run))
        if given and sweep is None
    ]
    if run is not None and (states or watch):
        problems.append("--run shows one run; --state and --watch do not apply to it")
    return problems


Where = Annotated[
    list[str] | None,
    typer.Option(
        "--where",
        help="Only the runs whose column NAME has this value, NAME=VALUE (several values: "
        "NAME=V1,V2; repeat for more columns): arch, width, seed or a sweep axis "
        "(train_size, lr_max, ...).",
    ),
]


def where_of(given: list[str] | None) -> dict[str, list[str]] | None:
    """--where NAME=VALUE[,VALUE...] (repeatable) as {NAME: [VALUE, ...]}."""
    if not given:
        return None
    where: dict[str, list[str]] = {}
    for item in given:
        name, sep, values = item.partition("=")
        texts = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or not texts:
            raise JamsweepError(f"--where {item!r}: write NAME=VALUE, e.g. --where train_size=1000")
        where.setdefault(name.strip(), []).extend(texts)
    return where
