"""A sweep's result files written directly (no Ray, no training), for tests and benchmarks.

Outputs are synthetic but shaped like the paper's: f_i(x) = g(x) + sigma_N eta_i(x), with
g a fixed function of the sample, eta_i seed noise and sigma_N ~ N^-1/4; labels follow g
with a little label noise. Every run file also holds train rows and snapshots at the grid's
snapshot_steps 0 and 50 (whose f differ), so a reducer that reads the wrong rows gets
different numbers. Each run's trace has the measurement steps up to its final step, a loss
that falls (to 0 for converged runs) and, unless `trace="old"`, a test error whose best
value is the final one minus EARLY_GAIN, reached at the middle measurement step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from orchestrator.results.store import manifest_table
from schemas.grid import parse_grid
from schemas.layout import FLAT, HIVE, METRICS_FILE_SCHEMA, SweepLayout, logits_schema
from schemas.run import RunSpec
from workers import io
from workers.execute import with_run_values

FC_GRID = """
sweep: {sweep}
dataset: {{name: digits_parity_pca, train_size: {n_train}, pca_dim: 10}}
architectures:
  - {{name: fc5, depth: 5, widths: {widths}}}
seeds: {seeds}
training: {{max_steps: {max_steps}{snapshots}}}
"""

CNN_GRID = """
sweep: {sweep}
dataset: {{name: cifar10, root: /nonexistent, train_size: {n_train}}}
architectures:
  - {{kind: cnn, name: cnn3, widths: {widths}}}
seeds: {seeds}
training: {{max_steps: {max_steps}, loss: hinge, optimizer: sgd{snapshots}}}
"""

SNAPSHOT_STEPS = [0, 50]
EARLY_GAIN = 0.02  # a run's best test error along training is its final one minus this

Converged = Callable[[int, int], bool]  # (width index, seed) -> reached zero loss
Steps = Callable[[int, int, bool], int]  # (width index, seed, converged) -> its final step


def default_converged(jam_index: int) -> Converged:
    """Widths from jam_index on converge with every seed; the one before with even seeds."""
    return lambda k, seed: k >= jam_index or (k == jam_index - 1 and seed % 2 == 0)


@dataclass
class SweepFiles:
    layout: SweepLayout
    specs: list[RunSpec]
    final_step: dict[str, int]  # run_id -> the step of its final outputs


def write_sweep(
    results: str,
    *,
    sweep: str = "synth",
    widths: list[int] | None = None,
    seeds: int = 4,
    n_test: int = 300,
    n_train: int | list[int] = 50,
    n_outputs: int = 1,
    converged: Converged | None = None,
    snapshot: bool = True,
    data_seed: int = 0,
    trace: str | None = "new",
    steps: Steps | None = None,
    max_steps: int = 1000,
    training: str = "",
    jammed: Callable[[RunSpec], bool] | None = None,
) -> SweepFiles:
    """Write grid.yaml, manifest.parquet, and the logits, trace and metrics files of every
    run. `trace`: "new" (with test_error), "old" (without, as before it was recorded) or
    None (no trace files). `steps` gives each run's final step (default 100 + 10 k + seed).
    `training` adds fields to the grid's training (", lr_max: 0.0003", or an axis:
    ", lr_max: [0.001, 0.01]"). A list `n_train` makes train_size an axis: each run has
    its own P training samples (the first P of a pool of max(n_train)) and the same test
    set. `jammed(spec)`, when given, says whether a run converged (instead of `converged`)."""
    widths = widths or [2, 3, 4, 6, 8, 12, 16, 24]
    converged = converged or default_converged(len(widths) // 2)
    steps = steps or (lambda k, seed, conv: 100 + 10 * k + seed)
    template = CNN_GRID if n_outputs > 1 else FC_GRID
    snapshots = (f", snapshot_steps: {SNAPSHOT_STEPS}" if snapshot else "") + training
    text = template.format(
        sweep=sweep,
        widths=widths,
        seeds=seeds,
        n_train=n_train,
        max_steps=max_steps,
        snapshots=snapshots,
    )
    specs = parse_grid(text).expand()
    axes = isinstance(n_train, list) or "[" in training  # lists need the layout of a file per run
    layout = SweepLayout(results, sweep, FLAT if axes else HIVE)
    if axes:
        io.write_text(layout.layout_json, layout.layout_text())
    io.write_text(layout.grid_yaml, text)
    io.write_table(layout.manifest, manifest_table(specs))
    pool = max(n_train) if isinstance(n_train, list) else n_train
    rng = np.random.default_rng(data_seed)
    truth = rng.normal(size=(n_test + pool, n_outputs))  # g(x): (samples, C)
    labels = _labels(truth, rng)
    final_step = {}
    index = {w: k for k, w in enumerate(widths)}
    for spec in specs:
        k = index[int(spec.width)]
        conv = jammed(spec) if jammed is not None else converged(k, spec.seed)
        step = steps(k, spec.seed, conv)
        final_step[spec.run_id] = step
        p = spec.dataset.train_size
        rows = np.r_[0:p, pool : pool + n_test]  # its P train samples, then the test set
        f = _outputs(truth, spec, k)[rows]
        write_run(layout, spec, f, labels[rows], p, step, conv, snapshot)
        if trace is not None:
            write_trace(layout, spec, step, conv, max_steps, test_error=trace == "new")
    return SweepFiles(layout, specs, final_step)


def measurement_steps(last: int) -> list[int]:
    """~20 log-spaced steps per decade and every 1000th up to `last`, and `last` (as the
    trainer measures; written here without importing it)."""
    found = {0, last, *range(0, last + 1, 1000)}
    k = 0
    while (s := int(10 ** (k / 20))) <= last:
        found.add(s)
        k += 1
    return sorted(found)


def write_trace(
    layout: SweepLayout,
    spec: RunSpec,
    last: int,
    converged: bool,
    max_steps: int,
    *,
    test_error: bool = True,
) -> None:
    """A run's trace: loss 1/sqrt(1 + step) (0 at the end if converged: then N_Delta is 0
    too), and the test error of its metrics + 0.001 |k - k_best| except EARLY_GAIN below
    it at the middle measurement step k_best."""
    import pyarrow.parquet as pq

    metrics = pq.read_table(layout.file("metrics", spec.run_id, *spec.key)).to_pylist()[0]
    steps = measurement_steps(last)
    best = len(steps) // 2
    rows = []
    for k, step in enumerate(steps):
        end = k == len(steps) - 1
        row = {
            "run_id": spec.run_id,
            "step": step,
            "loss": 0.0 if end and converged else (1.0 + step) ** -0.5,
            "n_unsat": 0 if end and converged else 40 - k // 4,
            "max_delta": 0.5,
            "train_error": 0.01,
            "f_norm": 1.0,
        }
        if test_error:
            final = metrics["test_error"]
            row["test_error"] = final - EARLY_GAIN if k == best else final + 0.001 * abs(k - best)
        rows.append(row)
    _write(layout, "trace", spec, pa.Table.from_pylist(rows))


def _write(layout: SweepLayout, table: str, spec: RunSpec, rows: pa.Table) -> None:
    """A run's file of `table` where its layout keeps it (layout 2: with the run's columns)."""
    flat = layout.tables_layout == FLAT
    io.write_table(
        layout.file(table, spec.run_id, *spec.key), with_run_values(rows, spec) if flat else rows
    )


def _labels(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = truth + 0.3 * rng.normal(size=truth.shape)
    if truth.shape[1] == 1:
        return np.where(noisy[:, 0] > 0, 1, -1)
    return noisy.argmax(axis=1)


def _outputs(truth: np.ndarray, spec: RunSpec, k: int) -> np.ndarray:
    """f of one run on every sample (samples, C): the truth plus seed noise ~ N^-1/4."""
    noise = np.random.default_rng([spec.seed, k, 7]).normal(size=truth.shape)
    return 3.0 * truth + 4.0 * spec.n_params**-0.25 * noise


def write_run(
    layout: SweepLayout,
    spec: RunSpec,
    f: np.ndarray,
    labels: np.ndarray,
    n_train: int,
    step: int,
    converged: bool,
    snapshot: bool = True,
) -> None:
    """One run's logits (train, test; final step and a step-0 snapshot) and metrics files.

    f (samples, C) and labels (samples,) list the train samples first, then the test ones."""
    n_out = f.shape[1]
    parts = [("train", slice(0, n_train), step), ("test", slice(n_train, None), step)]
    if snapshot:  # the trainer keeps no snapshot at or after the final step
        for at in (t for t in SNAPSHOT_STEPS if t < step):
            parts += [("train", slice(0, n_train), at), ("test", slice(n_train, None), at)]
    tables = []
    for split, rows, at in parts:
        values = f[rows] if at == step else snapshot_f(f[rows], at)  # a snapshot differs
        tables.append(_logits_part(spec, split, np.arange(len(f))[rows], labels[rows], values, at))
    _write(layout, "logits", spec, pa.concat_tables(tables))
    test_f = f[n_train:] if n_out > 1 else f[n_train:, 0]
    test_error = _error(test_f, labels[n_train:])
    metrics = {
        "run_id": spec.run_id,
        "n_params": spec.n_params,
        "steps": step,
        "converged": converged,
        "train_loss": 0.0 if converged else 0.01,
        "n_unsat": 0 if converged else 3,
        "max_delta": -0.1 if converged else 0.2,
        "train_error": 0.0 if converged else 0.006,
        "test_error": test_error,
        "f_norm": 1.0,
        "grad_norm": 1.0,
        "lr": 1e-3,
        "wall_s": 0.1,
        "device": "cpu",
    }
    _write(layout, "metrics", spec, pa.Table.from_pylist([metrics], METRICS_FILE_SCHEMA))


def snapshot_f(f: np.ndarray, step: int) -> np.ndarray:
    """What a run's snapshot at `step` holds, given its final outputs f (samples, C)."""
    return -f + 0.5 if step == 0 else 0.5 * f


def _logits_part(
    spec: RunSpec, split: str, sample: np.ndarray, label: np.ndarray, f: np.ndarray, step: int
) -> pa.Table:
    n, n_out = f.shape
    f_col = (
        pa.array(f[:, 0])
        if n_out == 1
        else pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * n_out + 1, n_out, dtype=np.int32)), pa.array(f.reshape(-1))
        )
    )
    grad = (
        pa.array(1.0 + np.abs(f).sum(axis=1)) if split == "test" else pa.nulls(n, pa.float64())
    )  # ||grad f|| only on the test split, as train.py
    return pa.table(
        {
            "run_id": pa.repeat(pa.scalar(spec.run_id), n),
            "n_params": pa.repeat(spec.n_params, n),
            "split": pa.repeat(pa.scalar(split), n),
            "sample": pa.array(sample, pa.int64()),
            "step": pa.repeat(step, n),
            "label": pa.array(label, pa.int64()),
            "f": f_col,
            "grad_norm": grad,
        },
        schema=logits_schema(n_out),
    )


def _error(f: np.ndarray, labels: np.ndarray) -> float:
    if f.ndim == 1:
        return float(np.mean(f * labels <= 0))
    return float(np.mean(f.argmax(axis=1) != labels))
