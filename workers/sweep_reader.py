"""Reading a sweep's result files one width at a time, for the reducer (no ray).

`final_test_outputs` fills a width's output matrix run file by run file with pyarrow (only
the rows and columns needed), so no table of every run's outputs is ever built; memory
goes back to the OS between widths (`returning_memory`, `trim_heap`). The same read of a
run's logits file gives its snapshots' ||f||^2; `width_traces` reads the runs' traces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from schemas.axes import AXES, TrainingGrid, point_label
from schemas.errors import JamsweepError
from schemas.layout import SweepLayout
from workers import io
from workers.history import TRACE_READ, RunTrace
from workers.outputs import WidthOutputs, WidthOutputsBuilder
from workers.reduce import WIDTH_KEY


@dataclass(frozen=True)
class ManifestRun:
    """What the reducer needs of a run: the manifest's light columns and, of the sweep's
    training, the step budget and the snapshot steps (read from the JSON, not validated)."""

    run_id: str
    arch: str
    width: float
    seed: int
    n_params: int
    max_steps: int = 0
    snapshot_steps: tuple[int, ...] = ()
    point: str = ""  # its values of the axes that vary in the sweep: schemas.axes.point_label
    axes: tuple[tuple[str, Any], ...] = ()  # those values, typed: (name, value), ...

    @property
    def key(self) -> tuple[str, float, int]:
        return (self.arch, self.width, self.seed)


def manifest_runs(layout: SweepLayout) -> list[ManifestRun]:
    """The manifest's runs; a run's point is made of the axes whose values vary among them
    (a manifest written before sweep axes has none)."""
    if not io.exists(layout.manifest):
        return []
    fs, path = io.resolve(layout.manifest)
    listed = set(pq.read_schema(path, filesystem=fs).names)
    axes = [a for a in AXES if a in listed]
    table = io.read_table(layout.manifest, ["run_id", "arch", "width", "seed", "n_params", *axes])
    max_steps, snapshot_steps = _training_of(layout)
    varying = [a for a in axes if len(set(table.column(a).to_pylist())) > 1]
    runs = []
    for row in table.to_pylist():
        point = {a: row[a] for a in varying}
        steps = row["max_steps"] if row.get("max_steps") is not None else max_steps
        runs.append(
            ManifestRun(
                **{k: row[k] for k in ("run_id", "arch", "width", "seed", "n_params")},
                max_steps=int(steps),
                snapshot_steps=snapshot_steps,
                point=point_label(point),
                axes=tuple(point.items()),
            )
        )
    return runs


def sweep_axes(runs: list[ManifestRun]) -> list[str]:
    """The axes that vary among `runs` (the typed columns beside `point`)."""
    return [name for name, _ in runs[0].axes] if runs else []


def _training_of(layout: SweepLayout) -> tuple[int, tuple[int, ...]]:
    """(max_steps, snapshot_steps) of the sweep, from its grid.yaml: every run of a sweep
    shares its training (a grid that changes it replaces the sweep). Read there, not from
    the manifest's spec column, which is most of the manifest (it doubled the reducer's
    memory for reading it at 120 runs); the first run's spec when the grid does not parse."""
    try:
        raw = yaml.safe_load(io.read_text(layout.grid_yaml)) or {}
        training = TrainingGrid.model_validate(raw.get("training") or {})  # lists allowed
        steps = training.max_steps  # a list: each run's own comes from the manifest
        return max(steps) if isinstance(steps, list) else steps, tuple(training.snapshot_steps)
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        first = io.read_table(layout.manifest, ["spec"]).column(0)[0].as_py()
        found = json.loads(first or "{}").get("training", {})
        return int(found.get("max_steps", 0)), tuple(found.get("snapshot_steps", ()))


def by_width(runs: list[ManifestRun]) -> dict[tuple, list[ManifestRun]]:
    """Runs grouped by their row of curves.parquet (workers.reduce.WIDTH_KEY: arch, width),
    in first-seen order; seeds sorted within a group."""
    groups: dict[tuple, list[ManifestRun]] = {}
    for r in runs:
        groups.setdefault(tuple(getattr(r, c) for c in WIDTH_KEY), []).append(r)
    return {key: sorted(group, key=lambda r: r.seed) for key, group in groups.items()}


def finished_width(
    layout: SweepLayout, runs: list[ManifestRun], present: set[str]
) -> tuple[list[ManifestRun], pd.DataFrame]:
    """The finished runs of one width and their metrics rows, each metrics file read once.

    Finished means what finished_run_ids says: the metrics file (written last, atomically)
    is there, can be read and names this run."""
    done, tables = [], []
    for run in runs:
        path = layout.file("metrics", run.run_id, *run.key)
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


def convergence_table(layout: SweepLayout) -> pd.DataFrame:
    """One row per width of the manifest, finished or not: the WIDTH_KEY columns, n_params,
    n_runs (in the manifest), n_seeds and n_converged (of its finished runs), from the
    metrics files alone: what workers.reduce.jamming decides from, without the outputs."""
    present = set(io.list_files(layout.metrics_dir))
    rows = []
    for key, group in by_width(manifest_runs(layout)).items():
        done, metrics = finished_width(layout, group, present)
        rows.append(
            dict(zip(WIDTH_KEY, key, strict=True))
            | {
                "n_params": group[0].n_params,
                "n_runs": len(group),
                "n_seeds": len(done),
                "n_converged": int(metrics["converged"].astype(bool).sum()) if done else 0,
            }
        )
    return pd.DataFrame(rows, columns=[*WIDTH_KEY, "n_params", "n_runs", "n_seeds", "n_converged"])


def final_test_outputs(
    layout: SweepLayout, runs: list[ManifestRun], metrics: pd.DataFrame
) -> tuple[WidthOutputs, list[dict[int, float]]]:
    """The width's final test outputs (a workers.reduce.WidthOutputs), one run file at a time:
    only the output matrix (runs, samples[, C]) and one run's rows are held; and for each
    run (in the outputs' order), step -> ||f||^2 of its test snapshots."""
    steps = dict(zip(metrics["run_id"], metrics["steps"], strict=True))
    builder = WidthOutputsBuilder(len(runs))
    snapshots = []
    for run in runs:
        *final, snapshot = run_final_test(layout, run, int(steps[run.run_id]))
        builder.add(run.run_id, *final)
        snapshots.append(snapshot)
    return builder.build(), snapshots


def run_final_test(layout: SweepLayout, run: ManifestRun, steps: int) -> tuple:
    """(sample (S,), label (S,), f (S,) or (S, C), grad_norm (S,), {step: ||f||^2}) of one
    run's test split: its final step, and the norms of its earlier snapshots. Read with
    pyarrow: only these columns, then only these rows. (A plain ParquetFile read and a
    filter keep less memory than pq.read_table's dataset scan.)"""
    import pyarrow.compute as pc

    fs, path = io.resolve(layout.file("logits", run.run_id, *run.key))
    try:
        whole = pq.ParquetFile(path, filesystem=fs).read(
            columns=["split", "step", "sample", "label", "f", "grad_norm"], use_threads=False
        )
    except (OSError, pa.ArrowException) as exc:
        raise JamsweepError(
            f"run {run.run_id} ({run.arch} w={run.width:g} seed={run.seed}) has no readable "
            f"logits file ({exc}); delete its metrics file "
            f"({layout.file('metrics', run.run_id, *run.key)}) and submit again to retrain it"
        ) from None
    test = pc.equal(whole["split"], "test")
    final_test = pc.and_(test, pc.equal(whole["step"], steps))
    table = whole.filter(final_test)
    earlier = whole.filter(pc.and_(test, pc.not_equal(whole["step"], steps)))
    del whole
    if table.num_rows == 0:
        raise JamsweepError(
            f"run {run.run_id} ({run.arch} w={run.width:g} seed={run.seed}) has no test "
            f"outputs at its final step {steps} in "
            f"{layout.file('logits', run.run_id, *run.key)}; delete its metrics file and "
            "submit again to retrain it"
        )
    grad = table.column("grad_norm").to_numpy()  # nulls (no gradient stored) become NaN
    return (
        table.column("sample").to_numpy(),
        table.column("label").to_numpy(),
        f_matrix(table.column("f")),
        grad,
        snapshot_norms(earlier),
    )


def snapshot_norms(test_rows: pa.Table) -> dict[int, float]:
    """step -> ||f||^2 over the test samples (mean over samples of |f(x)|^2) of the rows."""
    if test_rows.num_rows == 0:
        return {}
    steps = test_rows.column("step").to_numpy()
    f = f_matrix(test_rows.column("f"))
    squares = (f.reshape(len(f), -1) ** 2).sum(axis=1)  # (rows,)
    return {int(s): float(squares[steps == s].mean()) for s in np.unique(steps)}


def width_traces(
    layout: SweepLayout, runs: list[ManifestRun], present: set[str]
) -> list[RunTrace | None]:
    """Each run's trace (None where it has no readable trace file), in `runs`' order; only
    the columns the reducer uses, with a plain ParquetFile read (the dataset scan of
    pq.read_table costs more than the few rows of a trace)."""
    traces: list[RunTrace | None] = []
    for run in runs:
        location = layout.file("trace", run.run_id, *run.key)
        if location not in present:
            traces.append(None)
            continue
        try:
            fs, path = io.resolve(location)
            file = pq.ParquetFile(path, filesystem=fs)
            columns = [c for c in TRACE_READ if c in file.schema_arrow.names]
            table = file.read(columns=columns, use_threads=False)
        except (OSError, pa.ArrowException):
            traces.append(None)  # unreadable: as if absent (the run's results stand)
            continue
        traces.append(RunTrace.from_columns({c: table.column(c).to_numpy() for c in columns}))
    return traces


def f_matrix(column: pa.ChunkedArray):  # noqa: ANN202
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


class returning_memory:  # noqa: N801  (used as a `with` block, like a function)
    """Arrow allocates through the system allocator while the reducer reads.

    Arrow's default pool (mimalloc or jemalloc) keeps freed memory in per-thread heaps; across
    hundreds of run files that retention outgrew one width's outputs in the benchmark. The
    previous pool is restored after; buffers remember the pool that made them."""

    def __enter__(self) -> None:
        self.previous = pa.default_memory_pool()
        pa.set_memory_pool(pa.system_memory_pool())

    def __exit__(self, *exc: object) -> None:
        pa.set_memory_pool(self.previous)


def trim_heap() -> None:
    """Return free heap pages to the OS (glibc's malloc_trim; nothing elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
