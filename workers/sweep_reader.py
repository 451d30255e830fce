"""Reading a sweep's result files one width at a time, for the reducer (no ray).

`final_test_outputs` fills a width's output matrix run file by run file with pyarrow (only
the rows and columns needed), so no table of every run's outputs is ever built; memory
goes back to the OS between widths (`returning_memory`, `trim_heap`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.errors import JamsweepError
from schemas.layout import SweepLayout
from workers import io
from workers.reduce import WidthOutputs, WidthOutputsBuilder


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


def manifest_runs(layout: SweepLayout) -> list[ManifestRun]:
    if not io.exists(layout.manifest):
        return []
    table = io.read_table(layout.manifest, ["run_id", "arch", "width", "seed", "n_params"])
    return [ManifestRun(**row) for row in table.to_pylist()]


def by_width(runs: list[ManifestRun]) -> dict[tuple[str, float], list[ManifestRun]]:
    """Runs grouped by (arch, width), in first-seen order; seeds sorted within a group."""
    groups: dict[tuple[str, float], list[ManifestRun]] = {}
    for r in runs:
        groups.setdefault((r.arch, r.width), []).append(r)
    return {key: sorted(group, key=lambda r: r.seed) for key, group in groups.items()}


def finished_width(
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


def final_test_outputs(
    layout: SweepLayout, runs: list[ManifestRun], metrics: pd.DataFrame
) -> WidthOutputs:
    """The width's final test outputs (a workers.reduce.WidthOutputs), one run file at a time:
    only the output matrix (runs, samples[, C]) and one run's rows are held."""
    steps = dict(zip(metrics["run_id"], metrics["steps"], strict=True))
    builder = WidthOutputsBuilder(len(runs))
    for run in runs:
        builder.add(run.run_id, *run_final_test(layout, run, int(steps[run.run_id])))
    return builder.build()


def run_final_test(layout: SweepLayout, run: ManifestRun, steps: int) -> tuple:
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
        f_matrix(table.column("f")),
        grad,
    )


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
