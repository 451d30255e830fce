"""From stored outputs to the paper's curves: pure functions, arrays and tables in, tables out.

Conventions (README, "What the reducer computes"):
- a run's outputs are its test outputs at its final step (metrics.steps); snapshots are
  read for Fig. 7B only (workers.sweep_reader);
- `f` of one width is (runs, samples) for one output, (runs, samples, C) for C outputs;
  norms over outputs are Euclidean, |f(x)| = sqrt(sum_c f_c(x)^2), and a norm over the test
  set is the root mean square over samples, ||g||_mu = sqrt(mean_mu |g(x_mu)|^2);
- an error is y f <= 0 for one output (f = 0 counts as an error), argmax f != y for several
  (ties go to the lowest class index, as numpy's and torch's argmax);
- single-net columns (test_error_*, train_*, f_norm, grad_norm, grad_norm_median, f_var_all)
  use every finished seed of the width; spreads are standard deviations over seeds (ddof=0);
- the ensemble members are the converged seeds of a width (every seed with
  `ensemble_over="all"`); f_bar is their mean output; the ensemble columns (ens_test_error,
  gap, f_var, delta, and ensemble.parquet) use the members only, so that gap compares the
  same nets averaged and alone; a width without members has NaN there;
- every width of the manifest has a row, finished or not: a width none of whose runs has
  finished has n_seeds = 0 and NaN in the columns of numbers, and is not jammed.

The curves of one *series* (one architecture at one point of the other sweep axes) are
what N*, the fits and a line of a figure are made of. SERIES names the columns that make a
series, in this one place: `point` is the label of the axis values that vary among the
sweep's runs ('train_size=1000 lr_max=0.001'; '' when none varies), and each of those
axes is a typed column of its own beside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from schemas.axes import AXES
from schemas.errors import JamsweepError
from schemas.summary import EnsembleOver
from workers.outputs import WidthOutputs, rms

SERIES = ("arch", "point")  # the columns whose values make one series (one curve, one N*)
WIDTH_KEY = (*SERIES, "width")  # one row of curves.parquet

CURVE_COLUMNS = [  # curves.parquet, one row per (arch, width)
    *WIDTH_KEY,
    "n_params",
    "n_outputs",
    "n_runs",  # the width's runs in the manifest (n_seeds counts those finished)
    "n_seeds",
    "n_converged",
    "test_error_mean",
    "test_error_std",
    "train_error_mean",
    "train_loss_mean",
    "early_stop_error",
    "early_stop_step",
    "ens_test_error",
    "ens_member_error_mean",
    "gap",
    "f_norm",
    "f_var",
    "f_var_all",
    "grad_norm",
    "grad_norm_median",
    "delta",
    "n_ensembled",
    "n_dead",
    "max_steps",
    "n_late",
    "n_still_falling",
    "n_over_nstar",
]
# A dead net: its input gradient is zero on every test point (every ReLU off: f is a
# constant, its test error that of one label for all), the RMS over the test set at most this.
DEAD_GRAD = 1e-12

NUMBER_COLUMNS = [  # what a width without a finished run has no value of (NaN)
    "test_error_mean",
    "test_error_std",
    "train_error_mean",
    "train_loss_mean",
    "early_stop_error",
    "early_stop_step",
    "ens_test_error",
    "ens_member_error_mean",
    "gap",
    "f_norm",
    "f_var",
    "f_var_all",
    "grad_norm",
    "grad_norm_median",
    "delta",
]


def series_name(key: Mapping) -> str:
    """The name of the series a row belongs to, as summary.json keys it: the architecture,
    then the point ('fc train_size=1000'; 'fc' in a sweep without axes)."""
    return " ".join(str(v) for c in SERIES if (v := key.get(c, "")) != "")


def with_point(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with a `point` column ('' for tables of sweeps reduced before sweep axes)."""
    return table if "point" in table.columns else table.assign(point="")


def series_of(table: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """(series name, its rows) for every series of a curves-like table, sorted by
    architecture, then by the values of its axis columns as numbers (P = 500 before 1000)."""
    if table.empty:
        return
    table = with_point(table)
    axes = [a for a in AXES if a in table.columns]
    groups = []
    for values, rows in table.groupby(list(SERIES), sort=True):
        values = values if isinstance(values, tuple) else (values,)
        key = dict(zip(SERIES, values, strict=True))
        numbers = tuple(rows[a].iloc[0] for a in axes)
        groups.append(((key["arch"], numbers), series_name(key), rows))
    for _, name, rows in sorted(groups, key=lambda g: g[0]):
        yield name, rows


# -- per-sample and per-run pieces ----------------------------------------------------------


def misclassified(
    f: np.ndarray, labels: np.ndarray, *, multi_output: bool | None = None
) -> np.ndarray:
    """Booleans (..., S): y f <= 0 for one output, f (..., S); argmax f != y for several,
    f (..., S, C). `multi_output` defaults to "f has one axis more than labels"; batched
    callers say it, since (k, S) and (S, C) look alike."""
    if multi_output is None:
        multi_output = f.ndim > labels.ndim
    if multi_output:
        return np.argmax(f, axis=-1) != labels
    # y f <= 0 by the signs, without a float temporary as large as f
    return np.where(labels > 0, f <= 0, np.where(labels < 0, f >= 0, True))


def error_rate(f: np.ndarray, labels: np.ndarray) -> float:
    """Misclassified fraction: y f <= 0 for one output (samples,), argmax for (samples, C)."""
    return float(np.mean(misclassified(f, labels)))


def per_run_norm2(outputs: WidthOutputs) -> np.ndarray:
    """||f||^2_mu of each run on the test set (R,)."""
    return np.array([rms(f) ** 2 for f in outputs.f])


def per_run_errors(outputs: WidthOutputs) -> np.ndarray:
    """Test error of each run (R,), one run at a time (no (R, S) temporary)."""
    return np.array([error_rate(f, outputs.labels) for f in outputs.f])


def ensemble_members(
    metrics: pd.DataFrame, run_ids: Sequence[str], ensemble_over: EnsembleOver
) -> np.ndarray:
    """Indices into `run_ids` of the runs averaged into f_bar."""
    if ensemble_over not in ("converged", "all"):
        raise JamsweepError(f"ensemble_over must be 'converged' or 'all', not {ensemble_over!r}")
    if ensemble_over == "all":
        return np.arange(len(run_ids))
    converged = set(metrics.loc[metrics["converged"].astype(bool), "run_id"])
    return np.array([i for i, r in enumerate(run_ids) if r in converged], dtype=np.int64)


def ensemble_mean(outputs: WidthOutputs, members: np.ndarray) -> np.ndarray:
    """f_bar over `members`: (S,) or (S, C); a product with an indicator, so no copy of their
    rows. Sum, then divide: outputs that tie exactly in the mean tie in the result too."""
    indicator = np.zeros(len(outputs.run_ids))
    indicator[members] = 1.0
    return (indicator @ outputs.flat).reshape(outputs.f.shape[1:]) / len(members)


def distances_to(outputs: WidthOutputs, center: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """||f_i - center||^2_mu for each i in `runs` (len(runs),), one run at a time."""
    n = outputs.f.shape[1]
    return np.array([np.sum((outputs.f[i] - center) ** 2) / n for i in runs])


# -- one row of curves.parquet ----------------------------------------------------------


def width_curve(
    metrics: pd.DataFrame,
    outputs: WidthOutputs,
    *,
    ensemble_over: EnsembleOver = EnsembleOver.CONVERGED,
) -> dict:
    """The numbers of one row of curves.parquet from a width's metrics rows (one per run:
    run_id, n_params, converged, train_error, train_loss) and test outputs; the key, n_runs,
    the trace columns (workers.traces) and n_over_nstar are added by the caller.

    f_var_all is ||f - f_bar_all||^2 around the mean of every finished seed, defined at
    every width (paper Fig. 5, which shows it peak at jamming); f_var uses the members."""
    metrics = metrics.set_index("run_id").loc[outputs.run_ids].reset_index()
    errors = per_run_errors(outputs)  # (R,)
    f_norms = np.array([rms(f) for f in outputs.f])  # (R,)
    members = ensemble_members(metrics, outputs.run_ids, ensemble_over)
    every = np.arange(len(outputs.run_ids))
    f_var_all = float(distances_to(outputs, ensemble_mean(outputs, every), every).mean())
    row = {
        "n_params": int(metrics["n_params"].iloc[0]),
        "n_outputs": 1 if outputs.f.ndim == 2 else int(outputs.f.shape[2]),
        "n_seeds": len(outputs.run_ids),
        "n_converged": int(metrics["converged"].astype(bool).sum()),
        "test_error_mean": float(errors.mean()),
        "test_error_std": float(errors.std(ddof=0)),
        "train_error_mean": float(metrics["train_error"].mean()),
        "train_loss_mean": float(metrics["train_loss"].mean()),
        "f_norm": float(f_norms.mean()),
        "grad_norm": float(np.mean(outputs.grad_norm)),
        "grad_norm_median": float(np.median(outputs.grad_norm)),
        "f_var_all": f_var_all,
        "n_ensembled": len(members),
        "n_dead": int((np.asarray(outputs.grad_norm) <= DEAD_GRAD).sum()),
    }
    return row | _ensemble_columns(outputs, members, errors)


def unfinished_width(n_params: int, n_outputs: int) -> dict:
    """The row of a width none of whose runs has finished: no numbers, no seeds, not jammed."""
    return {
        "n_params": n_params,
        "n_outputs": n_outputs,
        "n_seeds": 0,
        "n_converged": 0,
        "n_ensembled": 0,
        "n_dead": 0,
        **dict.fromkeys(NUMBER_COLUMNS, math.nan),
    }


def _ensemble_columns(outputs: WidthOutputs, members: np.ndarray, errors: np.ndarray) -> dict:
    if len(members) == 0:
        return dict.fromkeys(
            ("ens_test_error", "ens_member_error_mean", "gap", "f_var", "delta"), math.nan
        )
    f_bar = ensemble_mean(outputs, members)
    ens_error = error_rate(f_bar, outputs.labels)
    member_error = float(errors[members].mean())
    f_var = float(distances_to(outputs, f_bar, members).mean())
    # error rates are multiples of 1/S, their mean over m members of 1/(m S), and so is the
    # gap: rounding to that removes the float residue (1e-17 for equal errors, on a log axis)
    unit = 1.0 / (len(members) * outputs.f.shape[1])
    return {
        "ens_test_error": ens_error,
        "ens_member_error_mean": member_error,
        "gap": round((member_error - ens_error) / unit) * unit,
        "f_var": f_var,
        "delta": _delta(f_var, outputs.grad_norm[members]),
    }


def _delta(f_var: float, grad_norms: np.ndarray) -> float:
    """Boundary shift estimate delta = ||f - f_bar|| / ||grad f|| (paper, section 4)."""
    grad = float(np.mean(grad_norms))
    return math.sqrt(f_var) / grad if grad > 0 else math.nan


# -- N*, over architectures ---------------------------------------------------------------


@dataclass(frozen=True)
class Jamming:
    """Where one architecture jams (DESIGN.md section 1), from its convergence table.

    n_star: the smallest N from which this width and every larger one have all their runs
    converged (a width with an unfinished or failed run is not jammed); None when the
    largest width is not jammed. smallest_jammed: the smallest N whose width has all its
    runs converged; it can sit below n_star when convergence is not monotone in N.
    bracket: the widths (just below N*, at N*), or why there is none. n_star_half: the N at
    which half of the runs converged, interpolated in log N."""

    n_star: int | None
    smallest_jammed: int | None
    bracket: tuple[float, float] | None
    no_bracket: str | None
    n_star_half: float | None


def jamming(curves: pd.DataFrame) -> dict[str, Jamming]:
    """N* and its companions for every series of `curves`: one row per width of the manifest,
    finished or not (a width left out would look jammed to its neighbours), with n_params,
    n_converged and n_runs (the width's runs in the manifest; n_seeds, the finished ones,
    when n_runs is absent). The one definition of "jammed" that the reducer, the summary,
    the figures and refine all use."""
    return {name: _jamming_of(group) for name, group in series_of(curves)}


def _jamming_of(group: pd.DataFrame) -> Jamming:
    g = group.sort_values(["n_params", "width"], kind="stable")
    n = g["n_params"].to_numpy(int)
    expected = (g["n_runs"] if "n_runs" in g else g["n_seeds"]).to_numpy(int)
    converged = g["n_converged"].to_numpy(int)
    jammed = (converged == expected) & (expected > 0)
    # walk down from the largest width while every width is jammed
    k = len(jammed)
    while k > 0 and jammed[k - 1]:
        k -= 1
    n_star = int(n[k]) if k < len(n) else None
    smallest = int(n[np.argmax(jammed)]) if jammed.any() else None
    widths = g["width"].to_numpy(float)
    bracket, why = None, None
    if n_star is None:
        why = (
            f"the largest width (h={widths[-1]:g}) has {converged[-1]} of {expected[-1]} runs "
            "at zero loss (the others did not reach it or have not finished), so N* is above "
            "the sweep; add larger widths (or more steps) to the grid, or finish its runs"
        )
    elif k == 0:
        why = (
            "every run of the smallest width already reached zero loss, so N* is below "
            "the sweep; add smaller widths to the grid"
        )
    else:
        bracket = (float(widths[k - 1]), float(widths[k]))
    fraction = converged / np.maximum(expected, 1)
    return Jamming(n_star, smallest, bracket, why, _first_crossing(n.astype(float), fraction, 0.5))


def jamming_points(curves: pd.DataFrame) -> dict[str, int | None]:
    """N* per architecture (see `jamming`)."""
    return {arch: j.n_star for arch, j in jamming(curves).items()}


def half_jamming_points(curves: pd.DataFrame) -> dict[str, float | None]:
    """Per architecture, the N at which half the runs reached zero loss: the first crossing
    of 1/2 by the converged fraction, interpolated linearly in log N between the two widths
    around it (None when the fraction never reaches 1/2, or already exceeds it at the
    smallest N)."""
    return {arch: j.n_star_half for arch, j in jamming(curves).items()}


def _first_crossing(n: np.ndarray, p: np.ndarray, level: float) -> float | None:
    above = np.flatnonzero(p >= level)
    if len(above) == 0:
        return None
    k = int(above[0])
    if p[k] == level:
        return float(n[k])
    if k == 0:
        return None
    t = (level - p[k - 1]) / (p[k] - p[k - 1])
    return float(np.exp(np.log(n[k - 1]) + t * (np.log(n[k]) - np.log(n[k - 1]))))


def jamming_bracket(curves: pd.DataFrame, arch: str) -> tuple[float, float]:
    """The widths (below, at) N* of `arch`: the largest width under N* and the width of N*.

    Raises JamsweepError when N* is not bracketed by the sweep (the largest width is not
    jammed, or the smallest width already is)."""
    found = jamming(curves)
    if arch not in found:
        raise JamsweepError(f"architecture {arch!r} has no runs; known: {sorted(found)}")
    j = found[arch]
    if j.bracket is None:
        raise JamsweepError(f"{arch}: {j.no_bracket}")
    return j.bracket


def with_n_over_nstar(curves: pd.DataFrame, n_star: dict[str, int | None]) -> pd.DataFrame:
    """curves plus n_over_nstar = N / N* of the row's series (NaN without N*)."""
    keyed = with_point(curves)
    names = keyed[list(SERIES)].apply(series_name, axis=1) if len(curves) else curves["arch"]
    stars = names.map(lambda a: n_star.get(a) or math.nan).astype(float)
    return curves.assign(n_over_nstar=curves["n_params"] / stars)
