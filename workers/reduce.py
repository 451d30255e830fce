"""From stored outputs to the paper's curves: pure functions, tables in, tables out.

Conventions (README, "What the reducer computes"):
- a run's outputs are those at its final step (metrics.steps);
- the ensemble f_bar averages f over the converged seeds of a width (all seeds with
  `ensemble_over="all"`); a width with no converged seed has no ensemble (NaN);
- test error is the fraction of test samples with y f <= 0 (argmax error for several
  outputs); spreads are standard deviations over seeds (ddof=0).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd

EnsembleOver = Literal["converged", "all"]


def outputs_matrix(logits: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Test outputs of one width as a matrix: (run ids, f (runs, samples[, C]), labels).

    `logits` holds the final-step test rows of every run of the width: run_id, sample,
    label, f. Samples are aligned by their index, so runs need not list them in one order.
    """
    runs = sorted(logits["run_id"].unique())
    samples = np.sort(logits["sample"].unique())
    col = {s: i for i, s in enumerate(samples)}
    row = {r: i for i, r in enumerate(runs)}
    first = logits["f"].iloc[0]
    n_out = len(first) if isinstance(first, (list, np.ndarray)) else 1
    f = np.full((len(runs), len(samples), n_out), np.nan)
    r_idx = logits["run_id"].map(row).to_numpy()
    s_idx = logits["sample"].map(col).to_numpy()
    f[r_idx, s_idx] = np.stack(logits["f"].to_numpy()).reshape(len(logits), n_out)
    labels = np.zeros(len(samples), dtype=np.int64)
    labels[s_idx] = logits["label"].to_numpy()
    return runs, (f[..., 0] if n_out == 1 else f), labels


def error_rate(f: np.ndarray, labels: np.ndarray) -> float:
    """Misclassified fraction: y f <= 0 for one output (samples,), argmax for (samples, C)."""
    if f.ndim == 1:
        return float(np.mean(labels * f <= 0))
    return float(np.mean(np.argmax(f, axis=-1) != labels))


def width_curve(
    metrics: pd.DataFrame, logits: pd.DataFrame, *, ensemble_over: EnsembleOver = "converged"
) -> dict:
    """One row of curves.parquet from the metrics rows and final test outputs of a width."""
    runs, f, labels = outputs_matrix(logits)
    converged = set(metrics.loc[metrics["converged"], "run_id"])
    members = [i for i, r in enumerate(runs) if ensemble_over == "all" or r in converged]
    ens = error_rate(f[members].mean(axis=0), labels) if members else math.nan
    errs = metrics["test_error"].to_numpy()
    return {
        "n_params": int(metrics["n_params"].iloc[0]),
        "n_seeds": len(metrics),
        "n_converged": int(metrics["converged"].sum()),
        "test_error_mean": float(errs.mean()),
        "test_error_std": float(errs.std(ddof=0)),
        "train_error_mean": float(metrics["train_error"].mean()),
        "train_loss_mean": float(metrics["train_loss"].mean()),
        "ens_test_error": ens,
        "n_ensembled": len(members),
    }


def jamming_points(curves: pd.DataFrame) -> dict[str, float | None]:
    """N* per architecture: the smallest N at which every seed reached zero loss (None when
    no width did)."""
    out: dict[str, float | None] = {}
    for arch, group in curves.groupby("arch"):
        jammed = group[group["n_converged"] == group["n_seeds"]]
        out[str(arch)] = int(jammed["n_params"].min()) if len(jammed) else None
    return out
