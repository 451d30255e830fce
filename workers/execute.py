"""Execute one run on a worker: data -> train (resuming from a checkpoint) -> result files.

The metrics file is written last: its presence is what marks a run as finished, so a
crash at any point leaves either a finished run or one that will be trained (again).
"""

from __future__ import annotations

import functools
import os
import platform

import pyarrow as pa
import torch

from schemas.errors import JamsweepError
from schemas.layout import (
    FLAT,
    METRICS_FILE_SCHEMA,
    TRACE_FILE_SCHEMA,
    SweepLayout,
    logits_schema,
    with_run_columns,
)
from schemas.run import RunSpec
from workers import io
from workers.data import Dataset, load_dataset
from workers.pack import train_pack
from workers.train import DTYPES, RunResult, TrainState
from workers.trainer import train


def pick_device(spec: RunSpec) -> torch.device:
    """The GPU Ray assigned (CUDA_VISIBLE_DEVICES as Ray set it) to a run that asks for
    one (`resources.num_gpus` > 0), else the CPU: a CPU run never takes a GPU it was not
    given, and a GPU run on a node where torch sees no CUDA device fails at once (Ray's GPU
    count is bookkeeping: a node can declare GPUs that torch cannot use) instead of
    training on the CPU unseen."""
    gpus = spec.resources.num_gpus
    if gpus <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build)"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise JamsweepError(
            f"run {spec.run_id} asks for a GPU (resources.num_gpus = {gpus:g}) but torch "
            f"sees no CUDA device on its node {platform.node()} (pid {os.getpid()}, "
            f"torch {torch.__version__}, CUDA {built}; CUDA_VISIBLE_DEVICES={visible!r}):"
            " give that node a usable GPU and driver, or set resources.num_gpus: 0"
        )
    return torch.device("cuda")


@functools.lru_cache(maxsize=4)
def _dataset_on(spec_json: str, device: str, dtype: str) -> Dataset:
    from schemas.grid import DatasetSpec

    data = load_dataset(DatasetSpec.model_validate_json(spec_json))
    return Dataset(data.train.to(device, DTYPES[dtype]), data.test.to(device, DTYPES[dtype]))


def dataset_for(spec: RunSpec, device: torch.device) -> Dataset:
    """The run's data on its device and in its dtype, loaded once per worker process."""
    return _dataset_on(spec.dataset.model_dump_json(), str(device), spec.training.dtype)


def _set_threads() -> None:
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(max(1, int(threads)))


def execute(spec: RunSpec, layout: SweepLayout) -> dict:
    """Train `spec`, write its logits, trace and metrics; return the metrics row."""
    _set_threads()
    done = _finished_metrics(layout.file("metrics", spec.run_id, *spec.key), spec.run_id)
    if done is not None:  # a retry of a run whose results landed before its worker died
        return done
    device = pick_device(spec)
    data = dataset_for(spec, device)
    ckpt = layout.checkpoint(spec.run_id)
    saved = io.load_checkpoint(ckpt)
    resume = TrainState.from_dict(saved) if saved is not None else None

    def save(state: TrainState) -> None:
        io.save_checkpoint(ckpt, state.to_dict())

    result = train(spec, data, device=device, resume=resume, save=save)
    return write_result(spec, layout, data, result)


def write_result(spec: RunSpec, layout: SweepLayout, data: Dataset, result: RunResult) -> dict:
    """Write a finished run's logits, trace, final weights (unless `keep_models` is off)
    and metrics (last: it marks the run finished), drop its checkpoint; return its metrics
    row."""
    tables = (
        ("logits", logits_table(spec, data, result)),
        ("trace", trace_table(spec, result)),
        ("metrics", metrics_table(spec, result)),  # last: the marker
    )
    files = []
    for name, table in tables:
        written = with_run_values(table, spec) if layout.tables_layout == FLAT else table
        files.append((layout.file(name, spec.run_id, *spec.key), io.table_bytes(written)))
    if spec.checkpoint.keep_models and result.weights is not None:
        model = layout.model(spec.run_id, *spec.key)
        files.insert(-1, (model, io.checkpoint_bytes(result.weights)))
    io.write_run_files(files)  # each whole or absent, the metrics file after the rest
    if not spec.checkpoint.keep:
        io.delete(layout.checkpoint(spec.run_id))
    return {"run_id": spec.run_id, **result.metrics}


def execute_pack(specs: list[RunSpec], layout: SweepLayout) -> list[dict]:
    """Train `specs` (runs of one pack_key) as one pack, each run resuming from its own
    checkpoint and writing its own files as it stops. Returns one row per spec, in order:
    its metrics row, or {"run_id", "error"} for a run that diverged. A run whose results
    are already there (a retried pack) is not trained again."""
    _set_threads()
    rows: dict[str, dict] = {}
    for spec in specs:
        landed = _finished_metrics(layout.file("metrics", spec.run_id, *spec.key), spec.run_id)
        if landed is not None:
            rows[spec.run_id] = landed
    todo = [s for s in specs if s.run_id not in rows]
    if todo:
        device = pick_device(todo[0])
        data = dataset_for(todo[0], device)
        saved = [io.load_checkpoint(layout.checkpoint(s.run_id)) for s in todo]
        resumes = [TrainState.from_dict(raw) if raw is not None else None for raw in saved]

        def save(spec: RunSpec, state: TrainState) -> None:
            io.save_checkpoint(layout.checkpoint(spec.run_id), state.to_dict())

        def done(spec: RunSpec, result: RunResult) -> None:
            rows[spec.run_id] = write_result(spec, layout, data, result)

        def failed(spec: RunSpec, exc: Exception) -> None:
            rows[spec.run_id] = {"run_id": spec.run_id, "error": f"{type(exc).__name__}: {exc}"}

        train_pack(todo, data, device=device, resumes=resumes, save=save, done=done, failed=failed)
    return [rows[s.run_id] for s in specs]


def _finished_metrics(path: str, run_id: str) -> dict | None:
    """The metrics row of `run_id` if its (atomically written) metrics file is there."""
    if not io.exists(path):
        return None
    try:
        rows = io.read_table(path).to_pylist()
    except (OSError, pa.ArrowException):
        return None
    return rows[0] if rows and rows[0]["run_id"] == run_id else None


def with_run_values(table: pa.Table, spec: RunSpec) -> pa.Table:
    """`table` with the run's key (arch, width, seed) and axis values in every row, typed
    (layout 2: what a plain reader of the folder gets as columns)."""
    values = {"arch": spec.arch.name, "width": float(spec.width), "seed": spec.seed}
    values |= spec.axis_values
    schema = with_run_columns(table.schema)
    n = table.num_rows
    columns = [
        table.column(f.name)
        if f.name in table.column_names
        else pa.array([values[f.name]] * n, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def logits_table(spec: RunSpec, data: Dataset, result: RunResult) -> pa.Table:
    """One row per (split, sample, step): the outputs f, with ||grad f|| on the test set."""
    columns: dict[str, list] = {name: [] for name in logits_schema(1).names}
    for out in result.outputs:
        part = data.train if out.split == "train" else data.test
        n = len(part)
        columns["run_id"] += [spec.run_id] * n
        columns["n_params"] += [spec.n_params] * n
        columns["split"] += [out.split] * n
        columns["sample"] += part.index.tolist()
        columns["step"] += [out.step] * n
        columns["label"] += part.y.cpu().to(torch.int64).tolist()
        columns["f"] += out.f.tolist()
        columns["grad_norm"] += out.grad_norm.tolist() if out.grad_norm is not None else [None] * n
    return pa.table(columns, schema=logits_schema(spec.n_outputs))


def trace_table(spec: RunSpec, result: RunResult) -> pa.Table:
    rows = [{"run_id": spec.run_id, **r} for r in result.trace]
    return pa.Table.from_pylist(rows, schema=TRACE_FILE_SCHEMA)


def metrics_table(spec: RunSpec, result: RunResult) -> pa.Table:
    row = {"run_id": spec.run_id, "n_params": spec.n_params, **result.metrics}
    return pa.Table.from_pylist([row], schema=METRICS_FILE_SCHEMA)
