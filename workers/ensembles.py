"""ensemble.parquet: the average of n of a width's M ensemble members (paper Fig. 4), over
subsets of the members (pure: arrays in, rows out).

Two references, because M is finite:
- `excess_error` and `delta` compare the n-average with the average of the same M members,
  f_bar^M. They vanish at n = M by construction: with independent seeds
  E ||f_bar^n - f_bar^M||^2 = s^2 (1/n - 1/M), s^2 the seeds' variance, so their ratios
  across n are fixed by M (sqrt(3) between n = 1 and 2 for M = 4), not by the nets;
- `delta_inf` is the distance to the average of infinitely many seeds, estimated without
  bias (in squares) for independent seeds: ||f_bar^n - f_bar^M||^2 + s^2 / M, with
  s^2 = sum_i ||f_i - f_bar^M||^2 / (M - 1); `excess_error_inf` is the error above the
  M -> infinity limit that the fit eps_bar^n - eps_bar^M = B (n^-b - M^-b) extrapolates
  (workers.ensemble_fits fills it in once the fit is made).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from workers.outputs import WidthOutputs
from workers.reduce import distances_to, ensemble_mean, error_rate, misclassified

MAX_SUBSETS = 64  # subsets of n seeds per n in ensemble.parquet (all of them when fewer)

ENSEMBLE_COLUMNS = [  # ensemble.parquet, one row per (arch, width, n)
    "arch",
    "point",  # of the other sweep axes (workers.reduce.SERIES)
    "width",
    "n_params",
    "n",
    "n_members",
    "n_subsets",
    "exact",
    "test_error_mean",
    "test_error_std",
    "excess_error",
    "excess_error_inf",
    "delta",
    "delta_inf",
]


def seed_subsets(
    m: int, n: int, *, max_subsets: int = MAX_SUBSETS, seed: int = 0
) -> tuple[np.ndarray, bool]:
    """Subsets of n of m seeds as index rows (k, n), and whether they are all C(m, n) of them.

    Exact when C(m, n) <= max_subsets; otherwise max_subsets uniform random subsets drawn
    from a generator seeded by (seed, m, n), so a reduce gives the same table every time."""
    if math.comb(m, n) <= max_subsets:
        return np.array(list(itertools.combinations(range(m), n)), dtype=np.int64), True
    rng = np.random.default_rng([seed, m, n])
    return np.sort(rng.random((max_subsets, m)).argsort(axis=1)[:, :n], axis=1), False


def ensemble_curve(
    outputs: WidthOutputs, members: np.ndarray, *, max_subsets: int = MAX_SUBSETS, seed: int = 0
) -> list[dict]:
    """Rows of ensemble.parquet for one width: for n = 1..M (M = len(members)), the test error
    of the average of n members (mean and std over subsets), its excess over the full
    ensemble, delta_n = sqrt(mean ||f_bar^n - f_bar^M||^2) / ||grad f||, and delta_inf, the
    same distance to the infinite ensemble (module docstring). excess_error_inf is NaN here."""
    m = len(members)
    if m == 0:
        return []
    f_bar = ensemble_mean(outputs, members).reshape(-1)  # (S*C,)
    full_error = error_rate(f_bar.reshape(outputs.f.shape[1:]), outputs.labels)
    grad = float(np.mean(outputs.grad_norm[members]))
    spread = seed_variance(outputs, members)  # s^2, NaN for one member
    rows = []
    for n in range(1, m + 1):
        subsets, exact = seed_subsets(m, n, max_subsets=max_subsets, seed=seed)
        errors, dist2 = _subset_errors(outputs, members[subsets], f_bar)
        d2 = float(dist2.mean())
        rows.append(
            {
                "n": n,
                "n_members": m,
                "n_subsets": len(subsets),
                "exact": exact,
                "test_error_mean": float(errors.mean()),
                "test_error_std": float(errors.std(ddof=0)),
                "excess_error": float(errors.mean()) - full_error,
                "excess_error_inf": math.nan,
                "delta": math.sqrt(d2) / grad if grad > 0 else math.nan,
                "delta_inf": math.sqrt(d2 + spread / m) / grad if grad > 0 else math.nan,
            }
        )
    return rows


def seed_variance(outputs: WidthOutputs, members: np.ndarray) -> float:
    """s^2 = sum_i ||f_i - f_bar||^2_mu / (M - 1) over the members: the unbiased variance of
    one seed's outputs around the infinite ensemble (NaN for fewer than two members)."""
    m = len(members)
    if m < 2:
        return math.nan
    f_bar = ensemble_mean(outputs, members)
    return float(distances_to(outputs, f_bar, members).sum()) / (m - 1)


def _subset_errors(
    outputs: WidthOutputs, subsets: np.ndarray, f_bar: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Test error (k,) and ||f_bar_subset - f_bar||^2_mu (k,) of the averages of `subsets`
    (k, n) of run indices. One matrix product per block of subsets; a block holds at most an
    eighth of the width's rows, which bounds the temporaries."""
    r, n_samples = len(outputs.run_ids), outputs.f.shape[1]
    block = max(1, r // 8)
    errors, dist2 = np.empty(len(subsets)), np.empty(len(subsets))
    for start in range(0, len(subsets), block):
        chunk = subsets[start : start + block]
        indicator = np.zeros((len(chunk), r))  # (b, R)
        np.put_along_axis(indicator, chunk, 1.0, axis=1)
        avg = indicator @ outputs.flat  # (b, S*C): sums, then means (see ensemble_mean)
        avg /= chunk.shape[1]
        shaped = avg.reshape(len(chunk), *outputs.f.shape[1:])
        wrong = misclassified(shaped, outputs.labels, multi_output=outputs.f.ndim == 3)
        errors[start : start + len(chunk)] = wrong.mean(axis=1)
        avg -= f_bar
        dist2[start : start + len(chunk)] = np.einsum("ij,ij->i", avg, avg) / n_samples
    return errors, dist2
