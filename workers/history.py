"""A run's history, not only its end (pure: arrays and tables in, rows out).

From its trace (loss, N_Delta and, since it is recorded, the test error at the measurement
steps): the early-stopping test error (the best test error a run reached, the paper's
Fig. 2 third curve), whether the step budget decided its fate (it converged in the last
tenth of max_steps, or its loss was still falling when the budget ended), and a width's
training curves (the mean over its runs at each measurement step). From its snapshots
(outputs stored at `training.snapshot_steps`): ||f||^2 on the test set at those times
(paper Fig. 7B).

A run that stopped before a step counts there with its last state: it stopped because it
fitted its training set, and a stopped net no longer changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from workers.reduce import Jamming

LATE_FRACTION = 0.1  # "converged in the last tenth of max_steps"
STILL_FALLING = 0.01  # loss fell by more than 1% over the budget's last tenth

TRACE_READ = ["step", "loss", "n_unsat", "test_error"]  # what the reducer reads of a trace

TRAINING_COLUMNS = [  # training.parquet, one row per (arch, width, measurement step)
    "arch",
    "point",  # of the other sweep axes (workers.reduce.SERIES)
    "width",
    "n_params",
    "step",
    "n_runs",
    "n_training",
    "loss_mean",
    "n_unsat_mean",
    "test_error_mean",
]
SNAPSHOT_COLUMNS = [  # snapshots.parquet, one row per (arch, width, snapshot step)
    "arch",
    "point",  # of the other sweep axes (workers.reduce.SERIES)
    "width",
    "n_params",
    "step",
    "n_runs",
    "n_stopped",
    "f_norm2",
]


@dataclass(frozen=True)
class RunTrace:
    """One run's trace, sorted by step: step (T,), loss (T,), n_unsat (T,), and test_error
    (T,) or None for traces written before the trainer recorded it."""

    step: np.ndarray
    loss: np.ndarray
    n_unsat: np.ndarray
    test_error: np.ndarray | None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> RunTrace:
        return cls.from_columns({c: frame[c].to_numpy() for c in frame.columns})

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray]) -> RunTrace:
        """From a trace's columns (step, loss, n_unsat, and test_error if it has one)."""
        order = np.argsort(columns["step"], kind="stable")
        test = columns.get("test_error")
        test = None if test is None else np.asarray(test, float)[order]
        if test is not None and not np.isfinite(test).any():
            test = None  # a column of nulls: nothing was recorded
        return cls(
            np.asarray(columns["step"], np.int64)[order],
            np.asarray(columns["loss"], float)[order],
            np.asarray(columns["n_unsat"], float)[order],
            test,
        )


def early_stop(trace: RunTrace) -> tuple[float, int] | None:
    """(the smallest test error of the trace, the first step that reached it), or None."""
    if trace.test_error is None:
        return None
    finite = np.isfinite(trace.test_error)
    if not finite.any():
        return None
    best = float(np.min(trace.test_error[finite]))
    first = int(np.flatnonzero(finite & (trace.test_error == best))[0])
    return best, int(trace.step[first])


def converged_late(steps: int, converged: bool, max_steps: int) -> bool:
    """Converged, but only in the last tenth of the budget: a shorter budget would not."""
    return bool(converged) and steps > (1.0 - LATE_FRACTION) * max_steps


def still_falling(trace: RunTrace | None, converged: bool, max_steps: int) -> bool:
    """Not converged, and its loss fell by more than STILL_FALLING over the last tenth of
    the budget: more steps might have converged it. False without a trace."""
    if converged or trace is None or len(trace.step) < 2:
        return False
    before = trace.step <= (1.0 - LATE_FRACTION) * max_steps
    if not before.any():
        return False
    then, end = trace.loss[np.flatnonzero(before)[-1]], trace.loss[-1]
    return bool(end < (1.0 - STILL_FALLING) * then)


def trace_columns(
    traces: Sequence[RunTrace | None],
    steps: Sequence[int],
    converged: Sequence[bool],
    max_steps: int,
) -> dict:
    """The trace columns of a width's row of curves.parquet, from its finished runs' traces
    (None where a run has none) and metrics: early_stop_error (mean over runs of each run's
    best test error) and early_stop_step (median over runs of the step it was reached; both
    NaN unless every run's trace has test errors), max_steps, n_late, n_still_falling."""
    stops = [early_stop(t) if t is not None else None for t in traces]
    have_all = len(stops) > 0 and all(s is not None for s in stops)
    return {
        "early_stop_error": float(np.mean([s[0] for s in stops if s])) if have_all else math.nan,
        "early_stop_step": float(np.median([s[1] for s in stops if s])) if have_all else math.nan,
        "max_steps": int(max_steps),
        "n_late": sum(
            converged_late(s, c, max_steps) for s, c in zip(steps, converged, strict=True)
        ),
        "n_still_falling": sum(
            still_falling(t, c, max_steps) for t, c in zip(traces, converged, strict=True)
        ),
    }


def training_curve(traces: Sequence[RunTrace]) -> list[dict]:
    """Rows of training.parquet for one width: at each step of any of its traces, the mean
    over runs of loss, N_Delta and test error, a run that stopped earlier counting with its
    last values; n_training counts the runs still training (their trace goes on)."""
    traces = [t for t in traces if len(t.step)]
    if not traces:
        return []
    steps = np.unique(np.concatenate([t.step for t in traces]))  # (K,)
    # position of each run's last row at or before each step: (runs, K)
    at = np.stack([np.searchsorted(t.step, steps, side="right") - 1 for t in traces])
    started = at >= 0

    def mean_of(values: list[np.ndarray | None]) -> np.ndarray:
        if any(v is None for v in values):
            return np.full(len(steps), np.nan)
        rows = np.stack([np.asarray(v)[np.maximum(a, 0)] for v, a in zip(values, at, strict=True)])
        return np.where(started, rows, np.nan).mean(axis=0)

    loss = mean_of([t.loss for t in traces])
    unsat = mean_of([t.n_unsat for t in traces])
    test = mean_of([t.test_error for t in traces])
    training = np.sum([t.step[-1] > steps for t in traces], axis=0)
    return [
        {
            "step": int(s),
            "n_runs": int(started[:, k].sum()),
            "n_training": int(training[k]),
            "loss_mean": float(loss[k]),
            "n_unsat_mean": float(unsat[k]),
            "test_error_mean": float(test[k]),
        }
        for k, s in enumerate(steps)
    ]


def snapshot_rows(
    snapshots: Sequence[dict[int, float]],
    final_steps: Sequence[int],
    final_norm2: Sequence[float],
    at_steps: Sequence[int],
) -> list[dict]:
    """Rows of snapshots.parquet for one width: at each step t of `at_steps` (the grid's
    snapshot_steps), the mean over runs of ||f_t||^2 on the test set, from each run's
    snapshot at t (a dict step -> ||f_t||^2), or from its final outputs when it had stopped
    by t (n_stopped counts those); a run with neither is left out."""
    rows = []
    for t in sorted(set(at_steps)):
        values, stopped = [], 0
        for snap, end, final in zip(snapshots, final_steps, final_norm2, strict=True):
            if end <= t:
                values.append(final)
                stopped += 1
            elif t in snap:
                values.append(snap[t])
        if values:
            rows.append(
                {
                    "step": int(t),
                    "n_runs": len(values),
                    "n_stopped": stopped,
                    "f_norm2": float(np.mean(values)),
                }
            )
    return rows


def budget_warning(series: pd.DataFrame, j: Jamming) -> str | None:
    """Why N* may be the step budget's rather than the nets', from one series' rows of
    curves.parquet: the width just below N* has runs whose loss was still falling at the
    end (more steps could jam it and move N* down), or a width from N* on has runs that
    converged only in the last tenth of max_steps (a shorter budget would move N* up);
    without N*, the largest width's loss was still falling. None when neither holds."""
    g = series.sort_values(["n_params", "width"], kind="stable").reset_index(drop=True)
    if g.empty or "n_late" not in g:
        return None
    if j.n_star is None:
        below, above = [len(g) - 1], []
    else:
        k = int(np.flatnonzero(g["n_params"].to_numpy() == j.n_star)[0])
        below, above = ([k - 1] if k > 0 else []), list(range(k, len(g)))
    found = [
        f"at N = {g['n_params'][i]} (h={g['width'][i]:g}) {int(g['n_still_falling'][i])} of "
        f"{g['n_runs'][i]} runs' loss was still falling at the end"
        for i in below
        if g["n_still_falling"][i] > 0
    ] + [
        f"at N = {g['n_params'][i]} (h={g['width'][i]:g}) {int(g['n_late'][i])} of "
        f"{g['n_runs'][i]} runs converged only in the last tenth of the budget"
        for i in above
        if g["n_late"][i] > 0
    ]
    if not found:
        return None
    budget = int(np.nanmax(g["max_steps"].to_numpy(float)))
    return (
        f"N* may be the step budget's (max_steps = {budget}): {'; '.join(found)}. "
        "Train longer (training.max_steps) to see whether it moves"
    )
