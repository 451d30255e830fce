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

from orchestrator.progress import ProgressHook, RoundCounter
from orchestrator.store import (
    ORIGIN_REFINE,
    absolute,
    add_to_manifest,
    check_grid_change,
    existing,
    finished_run_ids,
    manifest_table,
    planned_runs,
    read_manifest,
    refuse_second_driver,
    sweep_names,
)
from orchestrator.tracker import Driver, pending_record, read_status, shown_records
from schemas.errors import JamsweepError
from schemas.grid import load_grid
from schemas.layout import RESULTS_DEFAULT, SweepLayout, default_results
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
    alive: bool = False  # a driver is at work on the sweep (its round has not ended)

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
            "alive": self.alive,
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
    shared_fs: bool = False,
    echo: Echo = _quiet,
    progress: ProgressHook | None = None,
) -> SubmitReport:
    """Run every run of the grid that has not finished yet; reduce when all are done.

    Everything is checked (grid, data, results location, sweep name, cluster and its
    resources) before anything is written. A sweep grows: runs the grid names that
    finished before are kept, new ones run. With an http(s):// address the sweep is handed
    to the cluster as a Ray job (see orchestrator.remote) and goes on without this process;
    its paths must then be ones every node sees (`shared_fs` declares an absolute path so).
    `progress`, if given, receives the round's counts about once a second (embedded Ray
    and ray:// or auto addresses; a Ray job reports through `echo`, line by line).
    """
    spec, text = load_grid(grid)
    if is_jobs_address(address):
        from orchestrator.remote import submit_job

        return submit_job(
            grid,
            spec,
            results=results,
            address=address or "",
            force=force,
            detach=detach,
            dry_run=dry_run,
            shared_fs=shared_fs,
            echo=echo,
        )
    # absolute: Ray workers and the tracker resolve paths from their own folders
    layout = SweepLayout(absolute(results or spec.results or default_results()), spec.sweep)
    from workers.data import check_dataset  # imports torch: only when submitting

    check_dataset(spec.dataset)
    replace = check_grid_change(layout, spec, force)
    grid_runs, refined = planned_runs(spec, layout) if not replace else (spec.expand(), [])
    specs = grid_runs + refined
    done_ids = set() if replace else finished_run_ids(layout, specs)
    todo = [s for s in specs if s.run_id not in done_ids]
    report = SubmitReport(spec.sweep, layout.results, len(specs), len(specs) - len(todo))
    if dry_run:
        report.dry_run, report.planned = True, todo
        return report
    refuse_second_driver(layout)
    io.check_writable(layout.results)

    def write_sweep() -> None:  # the grid as submitted, and its runs
        if replace:
            moved = io.move_aside(layout.root)
            echo(f"sweep {spec.sweep}: the previous grid's results were moved to {moved}")
        io.write_text(layout.grid_yaml, text)
        io.write_table(
            layout.manifest,
            pa.concat_tables([manifest_table(grid_runs), manifest_table(refined, ORIGIN_REFINE)]),
        )

    if not todo:
        write_sweep()
        echo(f"sweep {spec.sweep}: all {len(specs)} runs already done -> {layout.root}")
        report.status = status(spec.sweep, results=layout.results)
    else:
        from orchestrator.backend import RayBackend

        with RayBackend(address, num_cpus=num_cpus) as backend:
            backend.check_resources(spec.resources)
            write_sweep()
            echo(
                f"sweep {spec.sweep}: {len(specs)} runs, {report.n_already_done} already done, "
                f"{len(todo)} to run -> {layout.root}"
            )
            report.status = drive(
                backend, layout, specs, todo, done_ids, echo=echo, progress=progress
            )
    if not report.status.failed and report.status.counts["cancelled"] == 0:
        report.curves = reduce(spec.sweep, results=layout.results)
    return report


def is_jobs_address(address: str | None) -> bool:
    return address is not None and address.startswith(("http://", "https://"))


def run_on_ray(
    layout: SweepLayout,
    specs: list[RunSpec],
    todo: list[RunSpec],
    *,
    address: str | None,
    num_cpus: int | None,
    echo: Echo = _quiet,
    progress: ProgressHook | None = None,
) -> SweepStatus:
    """Connect to Ray and drive `todo` (a subset of `specs`) to a terminal state."""
    from orchestrator.backend import RayBackend

    with RayBackend(address, num_cpus=num_cpus) as backend:
        backend.check_resources(todo[0].resources if todo else None)
        todo_ids = {s.run_id for s in todo}
        finished = finished_run_ids(layout, [s for s in specs if s.run_id not in todo_ids])
        return drive(backend, layout, specs, todo, finished, echo=echo, progress=progress)


def drive(
    backend: RayBackend,
    layout: SweepLayout,
    specs: list[RunSpec],
    todo: list[RunSpec],
    finished: set[str],
    *,
    echo: Echo = _quiet,
    progress: ProgressHook | None = None,
) -> SweepStatus:
    """Start `todo` on the backend and wait for every run; the tracker records everything.
    `finished` holds the ids of the runs of `specs` whose results are already there.

    The driver beats every second (and learns of a cancellation). Its own task refs are
    the truth about which runs ended: should the tracker restart (its node died), the
    driver tells the new incarnation every outcome again. Stopped early (Ctrl-C, an
    error), the round is closed with its running runs recorded interrupted.
    """
    ended: dict[str, tuple[str, RunStatus, str | None]] = {}
    records = [_round_record(s, s.run_id in finished) for s in specs]
    tracker = backend.tracker(layout)
    incarnation = tracker.register(records, layout, Driver.this_process())
    try:
        waiting = {h.spec.run_id: h for h in backend.start(todo, layout, tracker)}
        n_done = len(specs) - len(todo)
        counter = RoundCounter(layout.sweep, len(specs), n_done, progress)
        cancelling = False
        while waiting:
            outcomes = backend.wait(list(waiting.values()), timeout_s=1.0)
            for outcome in outcomes:
                run_id = outcome.spec.run_id
                ended[run_id] = (run_id, outcome.state, outcome.error)
                del waiting[run_id]
                n_done += 1
                counter.ended_one(outcome.state)
                echo(_progress_line(n_done, len(specs), outcome))
            if outcomes:
                tracker.finished([ended[o.spec.run_id] for o in outcomes])
            counter.report(lambda: tracker.counts().get(RunStatus.RUNNING.value, 0))
            cancelled, now = tracker.heartbeat()
            if now != incarnation:  # a restarted tracker: repeat what it may have missed
                incarnation = now
                tracker.finished(list(ended.values()))
            if cancelled and waiting and not cancelling:
                echo(f"sweep {layout.sweep}: cancelled; stopping {len(waiting)} run(s)")
                backend.cancel(list(waiting.values()))
                cancelling = True
    except BaseException:
        _close_interrupted(backend, tracker)
        raise
    final = {r.run_id: r for r in tracker.close()}
    backend.release_tracker(tracker)
    for run_id, state, error in ended.values():  # the driver's refs decide what ended
        rec = final[run_id]
        if rec.state is not state and (state is RunStatus.DONE or not rec.state.is_terminal()):
            final[run_id] = rec.model_copy(update={"state": state, "error": error})
    return SweepStatus(layout.sweep, list(final.values()), "live")


def _close_interrupted(backend: RayBackend, tracker) -> None:  # noqa: ANN001
    """Record the round as interrupted, if the tracker can still be reached."""
    tracker.deadline_s = 5.0  # no long retries on the way out
    try:
        tracker.close(True)
        backend.release_tracker(tracker)
    except Exception:  # the cluster may be gone: the stale heartbeat tells the same
        pass


def _round_record(spec: RunSpec, finished: bool) -> RunRecord:
    """The record a round starts from: done when its results are there, else pending."""
    record = pending_record(spec)
    return record.model_copy(update={"state": RunStatus.DONE}) if finished else record


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


# -- status, ls, cancel ---------------------------------------------------------------


def status(
    sweep: str, *, results: str = RESULTS_DEFAULT, address: str | None = None
) -> SweepStatus:
    """Live from the tracker when `address` reaches a cluster that has one (auto, ray://,
    HOST:PORT); else from the persisted status.parquet, corrected by the result files (a
    metrics file means done) and by the round's heartbeat (a running run of a round whose
    driver is gone is interrupted). Reads no result file: one listing of the metrics
    folder."""
    if is_jobs_address(address):
        return _status_via_job(sweep, results, address or "")
    layout = existing(sweep, absolute(results))
    if address is not None:
        live = _live_records(layout, address)
        if live is not None:
            return SweepStatus(sweep, live, "live", alive=True)
    persisted = read_status(layout)
    records = shown_records(persisted.records, persisted.state)
    if io.exists(layout.manifest):  # the sweep's runs are the manifest's
        known = {r.run_id: r for r in records}
        rows = io.read_table(layout.manifest, ["run_id", "arch", "width", "seed", "n_params"])
        records = [known.get(row["run_id"]) or RunRecord(**row) for row in rows.to_pylist()]
    present = set(io.list_files(layout.metrics_dir))
    fixed = [
        r
        if r.state is RunStatus.DONE or layout.metrics(r.arch, r.width, r.seed) not in present
        else r.model_copy(update={"state": RunStatus.DONE, "error": None})
        for r in records
    ]
    return SweepStatus(sweep, fixed, "file", alive=persisted.state.is_alive())


def _status_via_job(sweep: str, results: str, address: str) -> SweepStatus:
    """`jamsweep status --json` run on the cluster (live tracker, else its files)."""
    from orchestrator.remote import run_cli_job

    log = run_cli_job(address, ["status", sweep, "--json", "--results", results])
    start, end = log.find("{"), log.rfind("}")
    if start < 0:
        raise JamsweepError(f"the cluster at {address} gave no status for {sweep!r}: {log[-300:]}")
    answer = json.loads(log[start : end + 1])
    records = [RunRecord.model_validate(r) for r in answer["runs"]]
    return SweepStatus(
        sweep, records, answer.get("source", "live"), alive=bool(answer.get("alive", False))
    )


def _live_records(layout: SweepLayout, address: str) -> list[RunRecord] | None:
    from orchestrator.backend import RayBackend

    try:
        with RayBackend(address) as backend:
            tracker = backend.existing_tracker(layout)
            return None if tracker is None else tracker.snapshot()
    except JamsweepError:
        return None


def cancel(sweep: str, *, results: str = RESULTS_DEFAULT, address: str = "auto") -> list[str]:
    """Ask the live tracker to cancel every unfinished run; returns their ids."""
    from orchestrator.backend import RayBackend

    if is_jobs_address(address):
        from orchestrator.remote import run_cli_job

        log = run_cli_job(address, ["cancel", sweep, "--results", results])
        return [line.split()[-1] for line in log.splitlines() if line.startswith("cancelled run ")]
    layout = existing(sweep, absolute(results))
    with RayBackend(address) as backend:
        tracker = backend.existing_tracker(layout)
        if tracker is None:
            raise JamsweepError(f"sweep {sweep!r} is not running on the cluster at {address!r}")
        return tracker.cancel()


def ls(results: str = RESULTS_DEFAULT) -> list[SweepStatus]:
    """Every sweep under `results`, with its persisted status."""
    return [status(name, results=results) for name in sweep_names(results)]


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

    layout = existing(sweep, results)
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
    layout = existing(sweep, results)
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
    """summary.json: N* (every run, half the runs), the smallest jammed N where it differs
    from N*, the bracket of N*, and the fits per arch."""
    from workers.fits import fit_curves
    from workers.reduce import jamming

    found = jamming(curves)
    fits = {
        str(arch): {
            name: fit.to_json() for name, fit in fit_curves(group, found[str(arch)].n_star).items()
        }
        for arch, group in curves.groupby("arch")
    }
    return {
        "sweep": sweep,
        "n_runs": n_runs,
        "n_done": n_done,
        "ensemble_over": ensemble_over,
        "max_subsets": max_subsets,
        "n_star": {a: j.n_star for a, j in found.items()},
        "n_star_half": {a: j.n_star_half for a, j in found.items()},
        "n_star_bracket": {a: list(j.bracket) if j.bracket else None for a, j in found.items()},
        "smallest_jammed_n": {
            a: j.smallest_jammed for a, j in found.items() if j.smallest_jammed != j.n_star
        },
        "fits": fits,
        "reduced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- plot, report ---------------------------------------------------------------------------


def _reduced(sweep: str, results: str) -> tuple[SweepLayout, pd.DataFrame, pd.DataFrame, dict]:
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
    progress: ProgressHook | None = None,
) -> RefineReport:
    """Add `n_widths` widths inside the bracket of N* of each architecture (or `arch`), with
    seeds 0..seeds-1 (default: the seeds the sweep already runs), run them into the same
    sweep, and reduce. The new runs join manifest.parquet."""
    import functools

    from orchestrator.refine import propose_widths, refined_specs, width_step
    from workers.reduce import jamming_bracket

    layout = existing(sweep, absolute(results))
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
    refuse_second_driver(layout)
    all_specs = manifest + add_to_manifest(layout, report.planned)
    report.status = run_on_ray(
        layout,
        all_specs,
        report.planned,
        address=address,
        num_cpus=num_cpus,
        echo=echo,
        progress=progress,
    )
    if not report.status.failed:
        report.curves = reduce(sweep, results=results)
    return report


def _n_params_at(template: RunSpec, width: float) -> int:
    return template.model_copy(update={"width": width}).n_params


def _convergence_table(layout: SweepLayout) -> pd.DataFrame:
    """Per (arch, width): n_params, n_runs (in the manifest), n_seeds and n_converged (of the
    finished runs): what `workers.reduce.jamming` decides from (metrics only)."""
    present = set(io.list_files(layout.metrics_dir))
    rows = []
    for (arch, width), group in _by_width(_manifest_runs(layout)).items():
        n_runs = len(group)  # finished or not: a width with an unfinished run is not jammed
        group, metrics = _finished_width(layout, group, present)
        if not group:
            continue
        rows.append(
            {
                "arch": arch,
                "width": width,
                "n_params": group[0].n_params,
                "n_seeds": len(group),
                "n_runs": n_runs,
                "n_converged": int(metrics["converged"].sum()),
            }
        )
    if not rows:
        raise JamsweepError(
            f"sweep {layout.sweep!r} has no finished runs yet: nothing brackets "
            "N*; wait for the sweep (jamsweep status) before refining"
        )
    return pd.DataFrame(rows)
