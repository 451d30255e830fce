"""submit / status / cancel / reduce / ls as typed functions: what the CLI calls, and what a
notebook user can call directly. No ray here: the cluster is behind `orchestrator.backend`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.tracker import pending_record, read_records
from schemas.errors import JamsweepError
from schemas.grid import GridSpec, load_grid, parse_grid
from schemas.layout import MANIFEST_SCHEMA, RESULTS_DEFAULT, SweepLayout
from schemas.run import RunRecord, RunSpec, RunStatus
from workers import io
from workers.data import check_dataset
from workers.reduce import EnsembleOver, jamming_points, width_curve

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class SweepStatus:
    sweep: str
    records: list[RunRecord]
    source: str  # "live" (the tracker answered) or "file" (status.parquet)

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(r.state.value for r in self.records)
        return {s.value: found.get(s.value, 0) for s in RunStatus}

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.state is RunStatus.FAILED]

    def to_json(self) -> dict:
        return {
            "sweep": self.sweep,
            "source": self.source,
            "counts": self.counts,
            "runs": [r.model_dump(mode="json") for r in self.records],
        }


@dataclass
class SubmitReport:
    sweep: str
    results: str
    n_runs: int
    n_already_done: int
    status: SweepStatus | None = None
    curves: pd.DataFrame | None = None
    dry_run: bool = False
    planned: list[RunSpec] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is None or not self.status.failed


# -- submit ----------------------------------------------------------------------------


def submit(
    grid: str | Path,
    *,
    address: str | None = None,
    results: str | None = None,
    num_cpus: int | None = None,
    dry_run: bool = False,
    force: bool = False,
    echo: Echo = _quiet,
) -> SubmitReport:
    """Run every run of the grid that has not finished yet; reduce when all are done.

    Validates everything (grid, data, results location, sweep name) before writing.
    """
    spec, text = load_grid(grid)
    layout = SweepLayout(results or spec.results or RESULTS_DEFAULT, spec.sweep)
    check_dataset(spec.dataset)
    _check_same_grid(layout, spec, force)
    specs = spec.expand()
    done_ids = finished_run_ids(layout, specs)
    todo = [s for s in specs if s.run_id not in done_ids]
    report = SubmitReport(spec.sweep, layout.results, len(specs), len(specs) - len(todo))
    if dry_run:
        report.dry_run, report.planned = True, todo
        return report

    io.check_writable(layout.results)
    io.write_text(layout.grid_yaml, text)
    io.write_table(layout.manifest, manifest_table(specs))
    echo(f"sweep {spec.sweep}: {len(specs)} runs, {report.n_already_done} already done, "
         f"{len(todo)} to run -> {layout.root}")
    report.status = run_on_ray(layout, specs, todo, address=address, num_cpus=num_cpus, echo=echo)
    if not report.status.failed:
        report.curves = reduce(spec.sweep, results=layout.results)
    return report


def run_on_ray(
    layout: SweepLayout,
    specs: list[RunSpec],
    todo: list[RunSpec],
    *,
    address: str | None,
    num_cpus: int | None,
    echo: Echo = _quiet,
) -> SweepStatus:
    """Drive the runs of `todo` to a terminal state on Ray; the tracker records everything."""
    from orchestrator.backend import RayBackend

    previous = {r.run_id: r for r in read_records(layout)}
    todo_ids = {s.run_id for s in todo}
    records = [
        pending_record(s) if s.run_id in todo_ids else _done_record(s, previous.get(s.run_id))
        for s in specs
    ]
    with RayBackend(address, num_cpus=num_cpus) as backend:
        tracker = backend.tracker(layout)
        tracker.register(records)
        waiting = backend.start(todo, layout, tracker)
        n_done = len(specs) - len(todo)
        cancelling = False
        while waiting:
            for outcome in backend.wait(waiting, timeout_s=1.0):
                tracker.finished(outcome.spec.run_id, outcome.state, outcome.error)
                n_done += 1
                echo(_progress_line(n_done, len(specs), outcome))
                waiting = [h for h in waiting if h.spec.run_id != outcome.spec.run_id]
            if not cancelling and waiting and tracker.is_cancelled():
                backend.cancel(waiting)
                cancelling = True
        final = SweepStatus(layout.sweep, tracker.snapshot(), "live")
        tracker.persist(force=True)
    return final


def _done_record(spec: RunSpec, previous: RunRecord | None) -> RunRecord:
    if previous is not None and previous.state is RunStatus.DONE:
        return previous
    return pending_record(spec).model_copy(update={"state": RunStatus.DONE})


def _progress_line(n: int, total: int, o) -> str:  # noqa: ANN001  (an Outcome)
    s = o.spec
    what = f"{s.arch.name} h={s.width:g} seed={s.seed} (N={s.n_params})"
    if o.state is RunStatus.DONE:
        m = o.metrics
        conv = "converged" if m["converged"] else f"{m['n_unsat']} unsatisfied"
        return f"[{n}/{total}] done      {what}: {m['steps']} steps, {conv}, test error {m['test_error']:.4f}"
    if o.state is RunStatus.FAILED:
        return f"[{n}/{total}] FAILED    {what}: {o.error}"
    return f"[{n}/{total}] cancelled {what}"


def _check_same_grid(layout: SweepLayout, spec: GridSpec, force: bool) -> None:
    """Refuse to mix two grids' results under one sweep name (unless --force)."""
    if not io.exists(layout.grid_yaml):
        return
    try:
        old = parse_grid(io.read_text(layout.grid_yaml), source=layout.grid_yaml)
    except JamsweepError:
        old = None
    if old is not None and old.identity() == spec.identity():
        return
    if not force:
        raise JamsweepError(
            f"sweep {spec.sweep!r} already exists in {layout.results} with a different grid; "
            "use another sweep name, or --force to keep the finished runs that both grids share "
            "and replace the rest"
        )


def finished_run_ids(layout: SweepLayout, specs: list[RunSpec]) -> set[str]:
    """Runs whose metrics file (written last, atomically) is there and names this run."""
    present = set(io.list_files(layout.metrics_dir))
    done = set()
    for s in specs:
        path = layout.metrics(*s.key)
        if path in present and _metrics_run_id(path) == s.run_id:
            done.add(s.run_id)
    return done


def _metrics_run_id(path: str) -> str | None:
    try:
        return io.read_table(path, columns=["run_id"]).column(0)[0].as_py()
    except (OSError, pa.ArrowException, IndexError):
        return None  # unreadable: not a result


def manifest_table(specs: list[RunSpec]) -> pa.Table:
    rows = [
        {"run_id": s.run_id, "arch": s.arch.name, "width": s.width, "seed": s.seed,
         "n_params": s.n_params, "spec": s.model_dump_json()}
        for s in specs
    ]
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


# -- status, ls, cancel ---------------------------------------------------------------


def status(sweep: str, *, results: str = RESULTS_DEFAULT, address: str | None = None) -> SweepStatus:
    """Live from the tracker when `address` reaches a cluster that has one; else from the
    persisted status.parquet, corrected by the result files (a metrics file means done)."""
    layout = _existing(sweep, results)
    if address is not None:
        live = _live_records(sweep, address)
        if live is not None:
            return SweepStatus(sweep, live, "live")
    records = read_records(layout)
    manifest = read_manifest(layout)
    known = {r.run_id for r in records}
    records += [pending_record(s) for s in manifest if s.run_id not in known]
    done = finished_run_ids(layout, manifest)
    fixed = [
        r if r.run_id not in done or r.state is RunStatus.DONE
        else r.model_copy(update={"state": RunStatus.DONE, "error": None})
        for r in records
    ]
    return SweepStatus(sweep, fixed, "file")


def _live_records(sweep: str, address: str) -> list[RunRecord] | None:
    from orchestrator.backend import RayBackend

    try:
        with RayBackend(address) as backend:
            tracker = backend.existing_tracker(sweep)
            return None if tracker is None else tracker.snapshot()
    except JamsweepError:
        return None


def cancel(sweep: str, *, results: str = RESULTS_DEFAULT, address: str = "auto") -> list[str]:
    """Ask the live tracker to cancel every unfinished run; returns their ids."""
    from orchestrator.backend import RayBackend

    _existing(sweep, results)
    with RayBackend(address) as backend:
        tracker = backend.existing_tracker(sweep)
        if tracker is None:
            raise JamsweepError(f"sweep {sweep!r} is not running on the cluster at {address!r}")
        return tracker.cancel()


def ls(results: str = RESULTS_DEFAULT) -> list[SweepStatus]:
    """Every sweep under `results`, with its persisted status."""
    return [status(name, results=results) for name in sweep_names(results)]


def sweep_names(results: str) -> list[str]:
    return [name for name in io.list_dirs(results) if io.exists(SweepLayout(results, name).grid_yaml)]


def _existing(sweep: str, results: str) -> SweepLayout:
    layout = SweepLayout(results, sweep)
    if not io.exists(layout.grid_yaml):
        known = sweep_names(results)
        hint = f"; sweeps there: {', '.join(sorted(known))}" if known else ""
        raise JamsweepError(f"no sweep {sweep!r} under {results!r}{hint}. Check the name and --results")
    return layout


def read_manifest(layout: SweepLayout) -> list[RunSpec]:
    if not io.exists(layout.manifest):
        return []
    return [RunSpec.model_validate_json(s) for s in io.read_table(layout.manifest, ["spec"]).column(0).to_pylist()]


# -- reduce ----------------------------------------------------------------------------


def reduce(
    sweep: str, *, results: str = RESULTS_DEFAULT, ensemble_over: EnsembleOver = "converged"
) -> pd.DataFrame:
    """Write curves.parquet and summary.json from the finished runs; return the curves.

    Streams one width at a time: only that width's test outputs are in memory.
    """
    layout = _existing(sweep, results)
    specs = read_manifest(layout)
    done = finished_run_ids(layout, specs)
    rows = []
    for (arch, width), group in _by_width(s for s in specs if s.run_id in done).items():
        metrics = pd.concat([io.read_table(layout.metrics(*s.key)).to_pandas() for s in group])
        logits = pd.concat([_final_test_outputs(layout, s, metrics) for s in group])
        rows.append({"arch": arch, "width": width, **width_curve(metrics, logits, ensemble_over=ensemble_over)})
    curves = pd.DataFrame(rows)
    if rows:
        curves = curves.sort_values(["arch", "n_params"]).reset_index(drop=True)
    io.write_table(layout.curves, pa.Table.from_pandas(curves, preserve_index=False))
    summary = {
        "sweep": sweep,
        "n_runs": len(specs),
        "n_done": len(done),
        "ensemble_over": ensemble_over,
        "n_star": jamming_points(curves) if rows else {},
        "reduced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    io.write_text(layout.summary, json.dumps(summary, indent=2) + "\n")
    return curves


def _by_width(specs) -> dict[tuple[str, float], list[RunSpec]]:  # noqa: ANN001
    groups: dict[tuple[str, float], list[RunSpec]] = {}
    for s in specs:
        groups.setdefault((s.arch.name, s.width), []).append(s)
    return groups


def _final_test_outputs(layout: SweepLayout, spec: RunSpec, metrics: pd.DataFrame) -> pd.DataFrame:
    steps = int(metrics.loc[metrics["run_id"] == spec.run_id, "steps"].iloc[0])
    fs, path = io.resolve(layout.logits(*spec.key))
    table = pq.read_table(
        path, filesystem=fs, columns=["run_id", "sample", "label", "f"],
        filters=[("split", "=", "test"), ("step", "=", steps)],
    )
    return table.to_pandas()


def load_summary(sweep: str, *, results: str = RESULTS_DEFAULT) -> dict:
    return json.loads(io.read_text(_existing(sweep, results).summary))


