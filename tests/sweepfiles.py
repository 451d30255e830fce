"""A sweep's result files written directly (no Ray, no training), for tests and benchmarks.

Outputs are synthetic but shaped like the paper's: f_i(x) = g(x) + sigma_N eta_i(x), with
g a fixed function of the sample, eta_i seed noise and sigma_N ~ N^-1/4; labels follow g
with a little label noise. Every run file also holds train rows and a step-0 snapshot
(whose f differs), so a reducer that reads the wrong rows gets different numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from orchestrator.results.store import manifest_table
from schemas.grid import parse_grid
from schemas.layout import METRICS_FILE_SCHEMA, SweepLayout, logits_schema
from schemas.run import RunSpec
from workers import io

FC_GRID = """
sweep: {sweep}
dataset: {{name: digits_parity_pca, train_size: {n_train}, pca_dim: 10}}
architectures:
  - {{name: fc5, depth: 5, widths: {widths}}}
seeds: {seeds}
training: {{max_steps: 1000}}
"""

CNN_GRID = """
sweep: {sweep}
dataset: {{name: cifar10, root: /nonexistent, train_size: {n_train}}}
architectures:
  - {{kind: cnn, name: cnn3, widths: {widths}}}
seeds: {seeds}
training: {{max_steps: 1000, loss: hinge, optimizer: sgd}}
"""

Converged = Callable[[int, int], bool]  # (width index, seed) -> reached zero loss


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
    n_train: int = 50,
    n_outputs: int = 1,
    converged: Converged | None = None,
    snapshot: bool = True,
    data_seed: int = 0,
) -> SweepFiles:
    """Write grid.yaml, manifest.parquet, and the logits and metrics files of every run."""
    widths = widths or [2, 3, 4, 6, 8, 12, 16, 24]
    converged = converged or default_converged(len(widths) // 2)
    template = CNN_GRID if n_outputs > 1 else FC_GRID
    text = template.format(sweep=sweep, widths=widths, seeds=seeds, n_train=n_train)
    specs = parse_grid(text).expand()
    layout = SweepLayout(results, sweep)
    io.write_text(layout.grid_yaml, text)
    io.write_table(layout.manifest, manifest_table(specs))
    rng = np.random.default_rng(data_seed)
    truth = rng.normal(size=(n_test + n_train, n_outputs))  # g(x): (samples, C)
    labels = _labels(truth, rng)
    final_step = {}
    index = {w: k for k, w in enumerate(widths)}
    for spec in specs:
        k = index[int(spec.width)]
        step = 100 + 10 * k + spec.seed
        final_step[spec.run_id] = step
        f = _outputs(truth, spec, k)
        write_run(layout, spec, f, labels, n_train, step, converged(k, spec.seed), snapshot)
    return SweepFiles(layout, specs, final_step)


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
    if snapshot:
        parts += [("train", slice(0, n_train), 0), ("test", slice(n_train, None), 0)]
    tables = []
    for split, rows, at in parts:
        values = f[rows] if at == step else -f[rows] + 0.5  # a snapshot differs from the end
        tables.append(_logits_part(spec, split, np.arange(len(f))[rows], labels[rows], values, at))
    io.write_table(layout.logits(*spec.key), pa.concat_tables(tables))
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
    io.write_table(layout.metrics(*spec.key), pa.Table.from_pylist([metrics], METRICS_FILE_SCHEMA))


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
