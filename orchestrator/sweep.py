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
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.tracker import pending_record, read_records
from schemas.errors import JamsweepError
from schemas.grid import GridSpec, load_grid, parse_grid
from schemas.layout import MANIFEST_SCHEMA, RESULTS_DEFAULT, SweepLayout
from schemas.run import RunRecord, RunSpec, RunStatus
from workers import io
from workers.reduce import EnsembleOver, jamming_points, width_curve

if TYPE_CHECKING:  # the backend imports ray: only when a sweep runs
    from orchestrator.backend import RayBackend

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
    job_id: str | None = None  # set when the sweep went to a cluster as a Ray job
    job_state: str | None = None

    @property
    def ok(self) -> bool:
        if self.job_state is not None:
            return self.job_state in ("SUCCEEDED", "PENDING", "RUNNING")
        if self.status is None:
            return True
        return not self.status.failed and self.status.counts["cancelled"] == 0


# -- submit ----------------------------------------------------------------------------


def submit(
    grid: str | Path,
    *,
    address: str | None = None,
    results: str | None = None,
    num_cpus: int | None = None,
    dry_run: bool = False,
    force: bool = False,
    detach: bool = False,
    grid_base: str | None = None,
    echo: Echo = _quiet,
) -> SubmitReport:
    """Run every run of the grid that has not finished yet; reduce when all are done.

    Everything is checked (grid, data, results location, sweep name, cluster and its
    resources) before anything is written. With an http(s):// address the sweep is handed
    to the cluster as a Ray job (see orchestrator.remote) and goes on without this process.
    """
    spec, text = load_grid(grid, base_dir=grid_base)
    # absolute: Ray workers and the tracker resolve paths from their own folders
    layout = SweepLayout(absolute(results or spec.results or RESULTS_DEFAULT), spec.sweep)
    if is_jobs_address(address):
        from orchestrator.remote import submit_job

        return submit_job(
            grid,
            spec,
            layout,
            address=address or "",
            force=force,
            detach=detach,
            dry_run=dry_run,
            echo=echo,
        )
    from workers.data import check_dataset  # imports torch: only when submitting

    check_dataset(spec.dataset)
    replace = _check_same_grid(layout, spec, force)
    specs = spec.expand() if replace else with_extra_runs(spec.expand(), read_manifest(layout))
    done_ids = set() if replace else finished_run_ids(layout, specs)
    todo = [s for s in specs if s.run_id not in done_ids]
    report = SubmitReport(spec.sweep, layout.results, len(specs), len(specs) - len(todo))
    if dry_run:
        report.dry_run, report.planned = True, todo
        return report
    io.check_writable(layout.results)
    if not todo:
        echo(f"sweep {spec.sweep}: all {len(specs)} runs already done -> {layout.root}")
        report.status = status(spec.sweep, results=layout.results)
    else:
        from orchestrator.backend import RayBackend

        with RayBackend(address, num_cpus=num_cpus) as backend:
            backend.check_resources(spec.resources)
            if replace:
                moved = io.move_aside(layout.root)
                echo(f"sweep {spec.sweep}: the previous grid's results were moved to {moved}")
            io.write_text(layout.grid_yaml, text)
            io.write_table(layout.manifest, manifest_table(specs))
            echo(
                f"sweep {spec.sweep}: {len(specs)} runs, {report.n_already_done} already done, "
                f"{len(todo)} to run -> {layout.root}"
            )
            report.status = drive(backend, layout, specs, todo, done_ids, echo=echo)
    if not report.status.failed and report.status.counts["cancelled"] == 0:
        report.curves = reduce(spec.sweep, results=layout.results)
    return report


def absolute(location: str) -> str:
    """A local folder made absolute; a URI (s3://..., file://...) as it is."""
    return location if "://" in location else str(Path(location).absolute())


def is_jobs_address(address: str | None) -> bool:
    return address is not None and address.startswith(("http://", "https://"))


def with_extra_runs(grid_runs: list[RunSpec], manifest: list[RunSpec]) -> list[RunSpec]:
    """The grid's runs plus those the manifest holds beyond them (added by `refine`)."""
    ids = {s.run_id for s in grid_runs}
    return grid_runs + [s for s in manifest if s.run_id not in ids]


def run_on_ray(
    layout: SweepLayout,
    specs: list[RunSpec],
    todo: list[RunSpec],
    *,
    address: str | None,
    num_cpus: int | None,
    echo: Echo = _quiet,
) -> SweepStatus:
    """Connect to Ray and drive `todo` (a subset of `specs`) to a terminal state."""
    from orchestrator.backend import RayBackend

    with RayBackend(address, num_cpus=num_cpus) as backend:
        backend.check_resources(todo[0].resources if todo else None)
        todo_ids = {s.run_id for s in todo}
        finished = finished_run_ids(layout, [s for s in specs if s.run_id not in todo_ids])
        return drive(backend, layout, specs, todo, finished, echo=echo)


def drive(
    backend: RayBackend,
    layout: SweepLayout,
    specs: list[RunSpec],
    todo: list[RunSpec],
    finished: set[str],
    *,
    echo: Echo = _quiet,
) -> SweepStatus:
    """Start `todo` on the backend and wait for every run; the tracker records everything.
    `finished` holds the ids of the runs of `specs` whose results are already there.

    The tracker is asked for a cancellation every second; finished runs persist at once.
    """
    previous = {r.run_id: r for r in read_records(layout)}
    todo_ids = {s.run_id for s in todo}
    records = [_record(s, s.run_id in todo_ids, s.run_id in finished, previous) for s in specs]
    tracker = backend.tracker(layout)
    tracker.register(records, layout)
    waiting = backend.start(todo, layout, tracker)
    n_done = len(specs) - len(todo)
    cancelling = False
    while waiting:
        for outcome in backend.wait(waiting, timeout_s=1.0):
            tracker.finished(outcome.spec.run_id, outcome.state, outcome.error)
            n_done += 1
            echo(_progress_line(n_done, len(specs), outcome))
            waiting = [h for h in waiting if h.spec.run_id != outcome.spec.run_id]
        if tracker.heartbeat() and waiting and not cancelling:
            echo(f"sweep {layout.sweep}: cancelled; stopping {len(waiting)} run(s)")
            backend.cancel(waiting)
            cancelling = True
    tracker.persist(True)
    return SweepStatus(layout.sweep, tracker.snapshot(), "live")


def _record(spec: RunSpec, todo: bool, finished: bool, previous: dict[str, RunRecord]) -> RunRecord:
    """The record a round starts from: pending for the runs it starts; for the others what
    was known (kept as it was: a failed run not retried stays failed), DONE when finished."""
    old = previous.get(spec.run_id)
    if todo:
        return pending_record(spec)
    if finished:
        if old is not None and old.state is RunStatus.DONE:
            return old
        return pending_record(spec).model_copy(update={"state": RunStatus.DONE})
    return old if old is not None else pending_record(spec)


def _progress_line(n: int, total: int, o) -> str:  # noqa: ANN001  (an Outcome)
    s = o.spec
    what = f"{s.arch.name} {width_symbol(s.arch.kind)}={s.width:g} seed={s.seed} (N={s.n_params})"
    if o.state is RunStatus.DONE:
        m = o.metrics
        conv = "converged" if m["converged"] else f"{m['n_unsat']} unsatisfied"
        result = f"{m['steps']} steps, {conv}, test error {m['test_error']:.4f}"
        return f"[{n}/{total}] done      {what}: {result}"
    if o.state is RunStatus.FAILED:
        return f"[{n}/{total}] FAILED    {what}: {o.error}"
    return f"[{n}/{total}] cancelled {what}"


def width_symbol(kind: str) -> str:
    """The paper's name of the swept width: h for FC nets, f (channels) for CNNs."""
    return "f" if kind == "cnn" else "h"


def _check_same_grid(layout: SweepLayout, spec: GridSpec, force: bool) -> bool:
    """Refuse to mix two grids' results under one sweep name. Returns True when the sweep
    holds a different grid and `force` asks to replace it (its folder is moved aside)."""
    if not io.exists(layout.grid_yaml):
        return False
    try:
        old = parse_grid(io.read_text(layout.grid_yaml), source=layout.grid_yaml)
    except JamsweepError:
        old = None
    if old is not None and old.identity() == spec.identity():
        return False
    if not force:
        raise JamsweepError(
            f"sweep {spec.sweep!r} already exists in {layout.results} with a different grid; "
            "use another sweep name, or --force to move the existing results aside "
            f"({spec.sweep}.replaced-TIMESTAMP) and start this grid afresh"
        )
    return True


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
        {
            "run_id": s.run_id,
            "arch": s.arch.name,
            "width": s.width,
            "seed": s.seed,
            "n_params": s.n_params,
            "spec": s.model_dump_json(),
        }
        for s in specs
    ]
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


# -- status, ls, cancel ---------------------------------------------------------------


def status(
    sweep: str, *, results: str = RESULTS_DEFAULT, address: str | None = None
) -> SweepStatus:
    """Live from the tracker when `address` reaches a cluster that has one (auto, ray://,
    HOST:PORT); else from the persisted status.parquet, corrected by the result files (a
    metrics file means done). Reads no result file: one listing of the metrics folder."""
    if is_jobs_address(address):
        return _status_via_job(sweep, results, address or "")
    layout = _existing(sweep, results)
    if address is not None:
        live = _live_records(sweep, address)
        if live is not None:
            return SweepStatus(sweep, live, "live")
    records = read_records(layout)
    known = {r.run_id for r in records}
    if io.exists(layout.manifest):
        rows = io.read_table(layout.manifest, ["run_id", "arch", "width", "seed", "n_params"])
        records += [RunRecord(**row) for row in rows.to_pylist() if row["run_id"] not in known]
    present = set(io.list_files(layout.metrics_dir))
    fixed = [
        r
        if r.state is RunStatus.DONE or layout.metrics(r.arch, r.width, r.seed) not in present
        else r.model_copy(update={"state": RunStatus.DONE, "error": None})
        for r in records
    ]
    return SweepStatus(sweep, fixed, "file")


def _status_via_job(sweep: str, results: str, address: str) -> SweepStatus:
    """`jamsweep status --json` run on the cluster (live tracker, else its files)."""
    from orchestrator.remote import run_cli_job

    log = run_cli_job(address, ["status", sweep, "--json", "--results", absolute(results)])
    start, end = log.find("{"), log.rfind("}")
    if start < 0:
        raise JamsweepError(f"the cluster at {address} gave no status for {sweep!r}: {log[-300:]}")
    answer = json.loads(log[start : end + 1])
    records = [RunRecord.model_validate(r) for r in answer["runs"]]
    return SweepStatus(sweep, records, answer.get("source", "live"))


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

    if is_jobs_address(address):
        from orchestrator.remote import run_cli_job

        log = run_cli_job(address, ["cancel", sweep, "--results", absolute(results)])
        return [line.split()[-1] for line in log.splitlines() if line.startswith("cancelled run ")]
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
    return [
        name for name in io.list_dirs(results) if io.exists(SweepLayout(results, name).grid_yaml)
    ]


def _existing(sweep: str, results: str) -> SweepLayout:
    layout = SweepLayout(results, sweep)
    if not io.exists(layout.grid_yaml):
        known = sweep_names(results)
        hint = f"; sweeps there: {', '.join(sorted(known))}" if known else ""
        raise JamsweepError(
            f"no sweep {sweep!r} under {results!r}{hint}. Check the name and --results"
        )
    return layout


def read_manifest(layout: SweepLayout) -> list[RunSpec]:
    if not io.exists(layout.manifest):
        return []
    return [
        RunSpec.model_validate_json(s)
        for s in io.read_table(layout.manifest, ["spec"]).column(0).to_pylist()
    ]


# -- reduce ----------------------------------------------------------------------------


def reduce(
    sweep: str,
    *,
    results: str = RESULTS_DEFAULT,
    ensemble_over: EnsembleOver = "converged",
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

    layout = _existing(sweep, results)
    runs = _manifest_runs(layout)
    present = set(io.list_files(layout.metrics_dir))
    curve_rows: list[dict] = []
    ensemble_rows: list[dict] = []
    n_done = 0
    with _returning_memory():
        for (arch, width), group in _by_width(runs).items():
            n_runs = len(group)  # the width's runs in the manifest, finished or not
            group, metrics = _finished_width(layout, group, present)
            if not group:
                continue
            n_done += len(group)
            outputs = _final_test_outputs(layout, group, metrics)
            key = {"arch": arch, "width": width, "n_params": group[0].n_params, "n_runs": n_runs}
            curve_rows.append(key | width_curve(metrics, outputs, ensemble_over=ensemble_over))
            members = ensemble_members(metrics, outputs.run_ids, ensemble_over)
            ensemble_rows += [
                key | row
                for row in ensemble_curve(outputs, members, max_subsets=max_subsets or MAX_SUBSETS)
            ]
            del outputs
            _trim_heap()  # give the width's memory back before the next one is read
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
    io.write_text(layout.summary, json.dumps(summary, indent=2) + "\n")
    if figures and len(curves):
        from orchestrator.plots import write_figures

        write_figures(layout, curves, ensemble, summary)
    return curves


def _by_width(runs: list[ManifestRun]) -> dict[tuple[str, float], list[ManifestRun]]:
    """Runs grouped by (arch, width), in first-seen order; seeds sorted within a group."""
    groups: dict[tuple[str, float], list[ManifestRun]] = {}
    for r in runs:
        groups.setdefault((r.arch, r.width), []).append(r)
    return {key: sorted(group, key=lambda r: r.seed) for key, group in groups.items()}


def _final_test_outputs(  # noqa: ANN201  (a workers.reduce.WidthOutputs)
    layout: SweepLayout, runs: list[ManifestRun], metrics: pd.DataFrame
):
    """The width's final test outputs (a workers.reduce.WidthOutputs), one run file at a time:
    only the output matrix (runs, samples[, C]) and one run's rows are held."""
    from workers.reduce import WidthOutputsBuilder

    steps = dict(zip(metrics["run_id"], metrics["steps"], strict=True))
    builder = WidthOutputsBuilder(len(runs))
    for run in runs:
        builder.add(run.run_id, *_run_final_test(layout, run, int(steps[run.run_id])))
    return builder.build()


def load_summary(sweep: str, *, results: str = RESULTS_DEFAULT) -> dict:
    """summary.json of a reduced sweep."""
    layout = _existing(sweep, results)
    if not io.exists(layout.summary):
        raise JamsweepError(
            f"sweep {sweep!r} has not been reduced yet: run `jamsweep reduce {sweep}` first"
        )
    return json.loads(io.read_text(layout.summary))


# -- reduce: reading one run, assembling the tables ---------------------------------------


class _returning_memory:  # noqa: N801  (used as a `with` block, like a function)
    """Arrow allocates through the system allocator while the reducer reads.

    Arrow's default pool (mimalloc or jemalloc) keeps freed memory in per-thread heaps; across
    hundreds of run files that retention outgrew one width's outputs in the benchmark. The
    previous pool is restored after; buffers remember the pool that made them."""

    def __enter__(self) -> None:
        self.previous = pa.default_memory_pool()
        pa.set_memory_pool(pa.system_memory_pool())

    def __exit__(self, *exc: object) -> None:
        pa.set_memory_pool(self.previous)


def _trim_heap() -> None:
    """Return free heap pages to the OS (glibc's malloc_trim; nothing elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class ManifestRun:
    """What the reducer needs of a run: the manifest's light columns (no spec to validate)."""

    run_id: str
    arch: str
    width: float
    seed: int
    n_params: int

    @property
    def key(self) -> tuple[str, float, int]:
        return (self.arch, self.width, self.seed)


def _manifest_runs(layout: SweepLayout) -> list[ManifestRun]:
    if not io.exists(layout.manifest):
        return []
    table = io.read_table(layout.manifest, ["run_id", "arch", "width", "seed", "n_params"])
    return [ManifestRun(**row) for row in table.to_pylist()]


def _finished_width(
    layout: SweepLayout, runs: list[ManifestRun], present: set[str]
) -> tuple[list[ManifestRun], pd.DataFrame]:
    """The finished runs of one width and their metrics rows, each metrics file read once.

    Finished means what finished_run_ids says: the metrics file (written last, atomically)
    is there, can be read and names this run."""
    done, tables = [], []
    for run in runs:
        path = layout.metrics(*run.key)
        if path not in present:
            continue
        try:
            table = io.read_table(path)
        except (OSError, pa.ArrowException):
            continue  # unreadable: not a result
        if table.num_rows and table.column("run_id")[0].as_py() == run.run_id:
            done.append(run)
            tables.append(table)
    if not tables:
        return [], pd.DataFrame()
    return done, pa.concat_tables(tables, promote_options="default").to_pandas()


def _run_final_test(layout: SweepLayout, run: ManifestRun, steps: int) -> tuple:
    """(sample (S,), label (S,), f (S,) or (S, C), grad_norm (S,)) of one run's test split at
    its final step, read with pyarrow: only these columns, then only these rows. (A plain
    ParquetFile read and a filter keep less memory than pq.read_table's dataset scan.)"""
    import pyarrow.compute as pc

    fs, path = io.resolve(layout.logits(*run.key))
    try:
        whole = pq.ParquetFile(path, filesystem=fs).read(
            columns=["split", "step", "sample", "label", "f", "grad_norm"], use_threads=False
        )
    except (OSError, pa.ArrowException) as exc:
        raise JamsweepError(
            f"run {run.run_id} ({run.arch} w={run.width:g} seed={run.seed}) has no readable "
            f"logits file ({exc}); delete its metrics file ({layout.metrics(*run.key)}) and "
            "submit again to retrain it"
        ) from None
    final_test = pc.and_(pc.equal(whole["split"], "test"), pc.equal(whole["step"], steps))
    table = whole.filter(final_test)
    del whole
    if table.num_rows == 0:
        raise JamsweepError(
            f"run {run.run_id} ({run.arch} w={run.width:g} seed={run.seed}) has no test "
            f"outputs at its final step {steps} in {layout.logits(*run.key)}; delete its "
            "metrics file and submit again to retrain it"
        )
    grad = table.column("grad_norm").to_numpy()  # nulls (no gradient stored) become NaN
    return (
        table.column("sample").to_numpy(),
        table.column("label").to_numpy(),
        _f_matrix(table.column("f")),
        grad,
    )


def _f_matrix(column: pa.ChunkedArray):  # noqa: ANN202
    """f as numpy: (S,) for a float column, (S, C) for a list column (every list C long)."""
    import pyarrow.compute as pc

    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        return column.to_numpy()
    lists = column.combine_chunks()
    lengths = pc.list_value_length(lists)
    lo, hi = pc.min(lengths).as_py(), pc.max(lengths).as_py()
    if lo != hi:
        raise JamsweepError(f"outputs f of one run have {lo} to {hi} entries; expected one length")
    return lists.flatten().to_numpy().reshape(len(lists), lo)


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
    sweep: str, n_runs: int, n_done: int, curves: pd.DataFrame, ensemble_over: str, max_subsets: int
) -> dict:
    """summary.json: N* (all seeds, half the seeds), its bracket, and the fits per arch."""
    from workers.fits import fit_curves
    from workers.reduce import half_jamming_points, jamming_bracket

    n_star = jamming_points(curves)
    brackets: dict[str, list[float] | None] = {}
    for arch in n_star:
        try:
            brackets[arch] = list(jamming_bracket(curves, arch))
        except JamsweepError:
            brackets[arch] = None
    fits = {
        str(arch): {
            name: fit.to_json() for name, fit in fit_curves(group, n_star[str(arch)]).items()
        }
        for arch, group in curves.groupby("arch")
    }
    return {
        "sweep": sweep,
        "n_runs": n_runs,
        "n_done": n_done,
        "ensemble_over": ensemble_over,
        "max_subsets": max_subsets,
        "n_star": n_star,
        "n_star_half": half_jamming_points(curves),
        "n_star_bracket": brackets,
        "fits": fits,
        "reduced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- plot, report ---------------------------------------------------------------------------


def _reduced(sweep: str, results: str) -> tuple[SweepLayout, pd.DataFrame, pd.DataFrame, dict]:
    """The reducer's outputs of a sweep: layout, curves, ensemble, summary."""
    summary = load_summary(sweep, results=results)
    layout = _existing(sweep, results)
    curves = io.read_table(layout.curves).to_pandas()
    ensemble = (
        io.read_table(layout.ensemble).to_pandas() if io.exists(layout.ensemble) else pd.DataFrame()
    )
    return layout, curves, ensemble, summary


def plot(sweep: str, *, results: str = RESULTS_DEFAULT) -> list[str]:
    """Draw the paper's figures from the reduced tables into figures/; return their paths."""
    from orchestrator.plots import write_figures

    layout, curves, ensemble, summary = _reduced(sweep, results)
    if curves.empty:
        raise JamsweepError(f"sweep {sweep!r} has no finished runs to plot yet")
    return write_figures(layout, curves, ensemble, summary)


def report(sweep: str, *, results: str = RESULTS_DEFAULT, output: str | None = None) -> str:
    """Write one self-contained HTML page (figures, curve table, fits); return its path."""
    from orchestrator.plots import render_figures, report_html

    layout, curves, ensemble, summary = _reduced(sweep, results)
    figures = render_figures(curves, ensemble, summary) if len(curves) else {}
    target = output or layout.report
    io.write_text(target, report_html(summary, curves, figures))
    return target


# -- refine: more widths around N* ----------------------------------------------------------


@dataclass
class RefineReport:
    sweep: str
    brackets: dict[str, tuple[float, float]]  # arch -> (width below N*, width at N*)
    widths: dict[str, list[float]]  # arch -> the widths added
    planned: list[RunSpec]  # the new runs
    status: SweepStatus | None = None
    curves: pd.DataFrame | None = None


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
    echo: Echo = _quiet,
) -> RefineReport:
    """Add `n_widths` widths inside the bracket of N* of each architecture (or `arch`), with
    seeds 0..seeds-1 (default: the seeds the sweep already runs), run them into the same
    sweep, and reduce. The new runs join manifest.parquet."""
    import functools

    from orchestrator.refine import propose_widths, refined_specs, width_step
    from workers.reduce import jamming_bracket

    layout = _existing(sweep, absolute(results))
    manifest = read_manifest(layout)
    convergence = _convergence_table(layout)
    archs = [arch] if arch is not None else sorted({s.arch.name for s in manifest})
    report = RefineReport(sweep, {}, {}, [])
    for name in archs:
        template = next((s for s in manifest if s.arch.name == name), None)
        if template is None:
            raise JamsweepError(
                f"sweep {sweep!r} has no architecture {name!r}; it has "
                f"{sorted({s.arch.name for s in manifest})}"
            )
        lo, hi = jamming_bracket(convergence, name)
        same = [s for s in manifest if s.arch.name == name]
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
    for name, widths in report.widths.items():
        lo, hi = report.brackets[name]
        echo(
            f"{name}: N* between h={lo:g} and h={hi:g}; adding h = "
            f"{', '.join(f'{w:g}' for w in widths)}"
        )
    if dry_run or not report.planned:
        return report
    all_specs = manifest + _add_to_manifest(layout, report.planned)
    report.status = run_on_ray(
        layout, all_specs, report.planned, address=address, num_cpus=num_cpus, echo=echo
    )
    if not report.status.failed:
        report.curves = reduce(sweep, results=results)
    return report


def _add_to_manifest(layout: SweepLayout, specs: list[RunSpec]) -> list[RunSpec]:
    """Append the runs of `specs` that manifest.parquet lacks; return them. Existing rows are
    kept as stored, so their run_ids keep naming their result files."""
    existing = io.read_table(layout.manifest)
    known = set(existing.column("run_id").to_pylist())
    added = [s for s in specs if s.run_id not in known]
    table = pa.concat_tables([existing, manifest_table(added)], promote_options="default")
    io.write_table(layout.manifest, table)
    return added


def _n_params_at(template: RunSpec, width: float) -> int:
    return template.model_copy(update={"width": width}).n_params


def _convergence_table(layout: SweepLayout) -> pd.DataFrame:
    """Per (arch, width): n_params, n_seeds, n_converged of the finished runs (metrics only)."""
    present = set(io.list_files(layout.metrics_dir))
    rows = []
    for (arch, width), group in _by_width(_manifest_runs(layout)).items():
        group, metrics = _finished_width(layout, group, present)
        if not group:
            continue
        rows.append(
            {
                "arch": arch,
                "width": width,
                "n_params": group[0].n_params,
                "n_seeds": len(group),
                "n_converged": int(metrics["converged"].sum()),
            }
        )
    if not rows:
        raise JamsweepError(
            f"sweep {layout.sweep!r} has no finished runs yet: nothing brackets "
            "N*; wait for the sweep (jamsweep status) before refining"
        )
    return pd.DataFrame(rows)
