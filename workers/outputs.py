"""A width's final test outputs as one array, filled run by run (pure: arrays in).

`WidthOutputsBuilder` aligns the runs' samples by index and holds only the output matrix
beside one run's table (the streaming reducer's memory bound); `outputs_matrix` builds the
same from a pandas frame, for notebooks and tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from schemas.errors import JamsweepError


@dataclass(frozen=True)
class WidthOutputs:
    """Final test outputs of every run of one (arch, width), samples aligned across runs."""

    run_ids: list[str]  # (R,)
    f: np.ndarray  # (R, S) one output, (R, S, C) several
    grad_norm: np.ndarray  # (R,): ||grad_x f||_mu of each run on the test set
    labels: np.ndarray  # (S,): +-1 for one output, class index for several

    @property
    def flat(self) -> np.ndarray:
        """f as (R, S*C), a view: what a weighted average over runs multiplies."""
        return self.f.reshape(len(self.run_ids), -1)


class WidthOutputsBuilder:
    """Fills one width's output matrix run by run, so only one run's table is ever held
    beside it (the streaming reducer's memory bound). Samples are aligned by their index."""

    def __init__(self, n_runs: int) -> None:
        self.n_runs = n_runs
        self.run_ids: list[str] = []
        self.samples: np.ndarray | None = None  # (S,) sorted sample indices of the first run
        self.labels: np.ndarray | None = None  # (S,)
        self.f: np.ndarray | None = None  # (R, S[, C])
        self.grad_norm = np.full(n_runs, np.nan)  # (R,)

    def add(
        self,
        run_id: str,
        sample: np.ndarray,
        label: np.ndarray,
        f: np.ndarray,
        grad_norm: np.ndarray,
    ) -> None:
        """One run: sample (S,), label (S,), f (S,) or (S, C), grad_norm (S,) per sample."""
        i = len(self.run_ids)
        if len(np.unique(sample)) != len(sample):
            raise JamsweepError(
                f"run {run_id} lists some test samples twice at its final step; its logits "
                "file is not one run's outputs: delete the run's files and submit again"
            )
        if self.f is None:
            order = np.argsort(sample, kind="stable")
            self.samples = sample[order]
            self.labels = np.asarray(label)[order]
            self.f = np.empty((self.n_runs, *np.shape(f)), dtype=np.float64)
        assert self.samples is not None and self.labels is not None
        rows = self._positions(run_id, sample)
        self.f[i, rows] = f
        self.grad_norm[i] = rms(np.asarray(grad_norm, dtype=np.float64))
        self.run_ids.append(run_id)

    def _positions(self, run_id: str, sample: np.ndarray) -> np.ndarray:
        assert self.samples is not None
        rows = np.searchsorted(self.samples, sample)
        ok = len(sample) == len(self.samples) and np.array_equal(
            self.samples[np.minimum(rows, len(self.samples) - 1)], sample
        )
        if not ok:
            raise JamsweepError(
                f"run {run_id} has final test outputs for other samples than the other runs of "
                "its width; the runs of a sweep must share one test set (same dataset spec)"
            )
        return rows

    def build(self) -> WidthOutputs:
        if self.f is None or len(self.run_ids) != self.n_runs:
            raise JamsweepError(f"expected {self.n_runs} runs' outputs, got {len(self.run_ids)}")
        assert self.labels is not None
        return WidthOutputs(self.run_ids, self.f, self.grad_norm, self.labels)


def outputs_matrix(logits: pd.DataFrame) -> WidthOutputs:
    """A width's outputs from a pandas frame of final test rows (run_id, sample, label, f and
    optionally grad_norm), as `open_sweep(...).logits('test')` gives them after filtering."""
    runs = sorted(logits["run_id"].unique())
    builder = WidthOutputsBuilder(len(runs))
    for run in runs:
        rows = logits[logits["run_id"] == run]
        f = np.stack(rows["f"].to_numpy()) if _is_multi(rows["f"]) else rows["f"].to_numpy(float)
        grad = (
            rows["grad_norm"].to_numpy(float) if "grad_norm" in rows else np.full(len(rows), np.nan)
        )
        builder.add(run, rows["sample"].to_numpy(), rows["label"].to_numpy(), f, grad)
    return builder.build()


def _is_multi(f: pd.Series) -> bool:
    return len(f) > 0 and isinstance(f.iloc[0], (list, np.ndarray))


def rms(x: np.ndarray) -> float:
    """||x||_mu = sqrt(mean over samples of |x|^2) for x (S,) or (S, C)."""
    if len(x) == 0:
        return math.nan
    return float(np.sqrt(np.mean(np.sum(x.reshape(len(x), -1) ** 2, axis=1))))
