"""`jamsweep refine`: more widths around N*, run into the same sweep.

Which widths to add between the two that bracket N* is pure (the first half of this file);
`refine` reads the sweep's convergence, plans the runs, runs them and reduces.

Bisection on the width: the new widths split the bracket (w_lo, w_hi) evenly, each moved to
the nearest width that gives a number of weights N not yet in the sweep, because for FC
nets N only changes when h crosses a multiple of 1/L (layer i has floor(h + 1 - (i+1)/L)
units), and for CNNs the channel count is an integer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import pandas as pd

from orchestrator.cluster import lease
from orchestrator.cluster.driver import run_on_ray
from orchestrator.cluster.progress import ProgressHook
from orchestrator.reports import Echo, RefineReport, quiet
from orchestrator.results.reduction import reduce
from orchestrator.results.store import (
    absolute,
    add_to_manifest,
    existing,
    read_manifest,
)
from schemas.axes import varying
from schemas.errors import JamsweepError
from schemas.layout import RESULTS_DEFAULT, SweepLayout
from schemas.modules import width_key
from schemas.run import RunSpec
from workers.reduce import jamming_bracket, series_name
from workers.sweep_reader import convergence_table, manifest_runs


def width_step(spec: RunSpec) -> float:
    """The finest change of width that can change N: 1/L for FC nets, 1 channel for CNNs."""
    return 1.0 / spec.arch.depth if spec.arch.kind == "fc" else 1.0


def candidate_widths(
    lo: float, hi: float, step: float, n_params: Callable[[float], int]
) -> dict[int, float]:
    """N -> the smallest width lo + j*step (j >= 1, < hi) that gives it, for every N strictly
    between those of lo and hi. Widths are rounded to 6 decimals, so folder names stay short."""
    out: dict[int, float] = {}
    n_lo, n_hi = n_params(lo), n_params(hi)
    j = 1
    while (w := round(lo + j * step, 6)) < hi:
        n = n_params(w)
        if n not in (n_lo, n_hi) and n not in out:
            out[n] = w
        j += 1
    return out


def propose_widths(
    lo: float,
    hi: float,
    k: int,
    *,
    step: float,
    n_params: Callable[[float], int],
    existing: Iterable[int] = (),
) -> list[float]:
    """Up to k widths inside (lo, hi), evenly spread, each with an N the sweep does not have.

    Fewer than k when the bracket holds fewer distinct new N; JamsweepError when it holds
    none (then N* is known to one step of N, and more seeds, not widths, would help)."""
    if k < 1:
        raise JamsweepError(f"--n-widths must be at least 1, not {k}")
    if not lo < hi:
        raise JamsweepError(f"the bracket of N* must have lo < hi, got ({lo:g}, {hi:g})")
    taken = set(existing)
    free = sorted(w for n, w in candidate_widths(lo, hi, step, n_params).items() if n not in taken)
    if not free:
        raise JamsweepError(
            f"no width between {lo:g} and {hi:g} gives a new number of weights N: N* is located "
            "to the resolution of the architecture; add seeds there instead (--seeds)"
        )
    chosen: list[float] = []
    for i in range(1, k + 1):
        target = lo + (hi - lo) * i / (k + 1)
        left = [w for w in free if w not in chosen]
        if not left:
            break
        chosen.append(min(left, key=lambda w: (abs(w - target), w)))
    return sorted(chosen)


def refined_specs(template: RunSpec, widths: list[float], seeds: list[int]) -> list[RunSpec]:
    """RunSpecs of the new runs: the template's arch, data and training at each width, seed.

    The spec is rebuilt by validation (not model_copy), so run_id and n_params follow the
    new width and seed."""
    if template.arch.kind == "module":  # its N at the new widths: counted from the built net
        facts = template.module_facts
        counts = {**facts.n_params, **{width_key(w): _n_params_at(template, w) for w in widths}}
        arch = template.arch.model_copy(
            update={"resolved": facts.model_copy(update={"n_params": counts})}
        )
        template = template.model_copy(update={"arch": arch})
    raw = template.model_dump(mode="json")
    return [RunSpec.model_validate({**raw, "width": w, "seed": s}) for w in widths for s in seeds]


# -- the command ---------------------------------------------------------------------


def refine_here(
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
    """Add `n_widths` widths inside the bracket of N* of each series (an architecture, or
    `arch`, at each point of the other sweep axes), with seeds 0..seeds-1 (default: the
    seeds the sweep already runs), run them into the same sweep from this process (an
    embedded Ray, or the cluster at `address`), and reduce. The new runs join
    manifest.parquet. In a sweep with points, a point whose N* is not bracketed is said
    and left as it is; refine fails only when no point of the architecture is bracketed."""
    layout = existing(sweep, absolute(results))
    manifest = read_manifest(layout)
    convergence = _convergence_table(layout)
    archs = [arch] if arch is not None else sorted({s.arch.name for s in manifest})
    point_of = {r.run_id: r.point for r in manifest_runs(layout)}
    report = RefineReport(sweep, {}, {}, [])
    report.axis_names = varying([s.axis_values for s in manifest])  # named in its listing
    for arch_name in archs:
        if not any(s.arch.name == arch_name for s in manifest):
            raise JamsweepError(
                f"sweep {sweep!r} has no architecture {arch_name!r}; it has "
                f"{sorted({s.arch.name for s in manifest})}"
            )
        points = sorted({point_of.get(s.run_id, "") for s in manifest if s.arch.name == arch_name})
        unbracketed = []
        for point in points:
            name = series_name({"arch": arch_name, "point": point})
            same = [
                s
                for s in manifest
                if s.arch.name == arch_name and point_of.get(s.run_id, "") == point
            ]
            try:  # a point without a bracket, or without a new N inside it: left as it is
                lo, hi = jamming_bracket(convergence, name)
                _plan_series(report, name, same, lo, hi, n_widths, seeds)
            except JamsweepError as exc:
                if len(points) == 1:
                    raise
                why = str(exc)
                unbracketed.append(why if name in why else f"{name}: {why}")
        if unbracketed and len(unbracketed) == len(points):
            raise JamsweepError("no point can be refined:\n" + "\n".join(unbracketed))
        for why in unbracketed:
            echo(f"left as it is: {why}")
    for name, widths in report.widths.items():
        lo, hi = report.brackets[name]
        echo(
            f"{name}: N* between h={lo:g} and h={hi:g}; adding h = "
            f"{', '.join(f'{w:g}' for w in widths)}"
        )
    if dry_run or not report.planned:
        return report
    with lease.acquire(layout, lease.Holder.this_process(address)) as held:
        all_specs = manifest + add_to_manifest(layout, report.planned)
        report.status = run_on_ray(
            layout,
            all_specs,
            report.planned,
            held,
            address=address,
            num_cpus=num_cpus,
            echo=echo,
            progress=progress,
        )
        if not report.status.failed:
            held.check()
            report.curves = reduce(sweep, results=results)
    return report


def _plan_series(
    report: RefineReport,
    name: str,
    same: list[RunSpec],
    lo: float,
    hi: float,
    n_widths: int,
    seeds: int | None,
) -> None:
    """Add to `report` the runs of `n_widths` new widths in (lo, hi) for one series, whose
    runs are `same`."""
    template = same[0]
    widths = propose_widths(
        lo,
        hi,
        n_widths,
        step=width_step(template),
        n_params=functools.partial(_n_params_at, template),
        existing={s.n_params for s in same},
    )
    seed_list = list(range(seeds)) if seeds is not None else sorted({s.seed for s in same})
    report.brackets[name], report.widths[name] = (lo, hi), widths
    report.planned += refined_specs(template, widths, seed_list)


def _n_params_at(template: RunSpec, width: float) -> int:
    if template.arch.kind == "module":
        from workers.builders import count_at  # the user's code: built to count

        return count_at(template, width)
    return template.model_copy(update={"width": width}).n_params


def _convergence_table(layout: SweepLayout) -> pd.DataFrame:
    """Per width of the manifest, finished or not: what `workers.reduce.jamming` decides
    from (workers.sweep_reader.convergence_table: a width none of whose runs finished is
    kept, not jammed; leaving it out would put N*, and the new widths, in the wrong place)."""
    table = convergence_table(layout)
    if not table["n_seeds"].any():
        raise JamsweepError(
            f"sweep {layout.sweep!r} has no finished runs yet: nothing brackets "
            "N*; wait for the sweep (jamsweep status) before refining"
        )
    return table
