"""Fig. 4's laws, fitted with the finite number M of averaged seeds in view (pure).

The reducer measures, for the average of n of a width's M members, its error above the
average of all M, eps_bar^n - eps_bar^M, and its distance to it, delta_n (workers.ensembles).
Both vanish at n = M whatever the nets do, so a power law in n cannot be read off them
directly. If the error above the infinite ensemble is B n^-b (the paper: b = 1), the
measured excess is B (n^-b - M^-b); if the distance to it is sqrt(A) n^-g (independent
seeds: g = 1/2), the measured delta_n^2 is A (n^-2g - M^-2g). These are the laws fitted,
with one exponent for every width above N* and one amplitude per width:

    y(n, N) = a_N (n^-p - M_N^-p),   p = b (error) or 2 g (delta),   on n < M_N.

For a given p the amplitudes are linear least squares (one ratio of sums per width), so p
is found by minimising the residual over a log grid and refining between its neighbours
(a profile fit). The amplitudes' uncertainties are those of the full Gauss-Newton
covariance at the optimum, scaled by the residuals (as scipy's curve_fit with
absolute_sigma=False). The exponent's is the larger of that and a jackknife over the
widths: the rows of one width share its M seeds, so their residuals understate how much
the exponent moves from one draw of seeds to the next, while widths are independent (on
synthetic outputs the fit's error was 0.4x the spread over draws, the jackknife's 1.1x).
With fewer than 3 widths there is no jackknife, and the fit says so.
eps_bar^inf is then eps_bar^M - B_N M^-b: `with_excess_inf` fills excess_error_inf with
the error above it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from schemas.summary import ENSEMBLE_DELTA, ENSEMBLE_ERROR, Fit
from workers.fits import NO_N_STAR, assess, explained

SEARCH = (0.02, 8.0)  # the range of p searched
GRID = 241
PAPER_B, PAPER_G = 1.0, 0.5
MIN_MEMBERS = 3  # a width with fewer averaged seeds has no point n < M beyond its amplitude


def fit_finite_m(
    n: ArrayLike,
    m: ArrayLike,
    width_n: ArrayLike,
    y: ArrayLike,
    *,
    law: str,
    exponent: str,
    amplitude: str,
    paper: float,
    power: float = 1.0,
) -> Fit:
    """y = a_w (n^-p - M_w^-p) with p = power * `exponent` shared by every width w (named by
    its N, `width_n`) and one `amplitude` a_w per width; rows with n >= M are left out (their
    excess is 0 by construction). Arrays (rows,)."""
    arrays = np.array([np.asarray(v, float) for v in (n, m, width_n, y)])  # (4, rows)
    rows = arrays[:, (arrays[0] < arrays[1]) & np.isfinite(arrays[3])]
    law_of = functools.partial(
        _profile_fit, law=law, exponent=exponent, amplitude=amplitude, paper=paper, power=power
    )
    fit = law_of(*rows)
    if not fit.ok:
        return fit
    widths = np.unique(rows[2])
    why = []
    if len(widths) >= 3:
        others = [law_of(*rows[:, rows[2] != w]) for w in widths]  # leave one width out
        values = np.array([f.params[exponent] for f in others if f.ok])
        if len(values) == len(widths):
            spread = np.sum((values - values.mean()) ** 2)
            jackknife = math.sqrt((len(values) - 1) / len(values) * spread)
            errors = fit.errors | {exponent: max(fit.errors[exponent], jackknife)}
            fit = fit.model_copy(update={"errors": errors})
    else:
        why.append(
            f"{len(widths)} width(s) above N*: the error of {exponent} is the fit's, which "
            "ignores that a width's rows share its seeds (3 widths give a jackknife)"
        )
    return _assess_finite_m(fit, exponent, amplitude, extra=why)


def _profile_fit(
    n: np.ndarray,
    m: np.ndarray,
    width_n: np.ndarray,
    y: np.ndarray,
    *,
    law: str,
    exponent: str,
    amplitude: str,
    paper: float,
    power: float,
) -> Fit:
    """The profile least-squares fit of the module docstring, before its flags."""
    widths, idx = np.unique(width_n, return_inverse=True)
    n_par = len(widths) + 1
    if len(y) < n_par + 1:
        return Fit(
            law=law,
            n_points=len(y),
            reason=f"{len(y)} usable point(s) for {n_par} parameters; need at least {n_par + 1}"
            f" (widths above N* with at least {MIN_MEMBERS} averaged seeds)",
        )

    def profile(p: float) -> tuple[float, np.ndarray, np.ndarray]:
        h = n**-p - m**-p  # (rows,) > 0 for n < M
        a = np.bincount(idx, h * y, len(widths)) / np.bincount(idx, h * h, len(widths))
        r = y - a[idx] * h
        return float(r @ r), a, h

    lo, hi = SEARCH[0] * power, SEARCH[1] * power
    grid = np.geomspace(lo, hi, GRID)
    rss = np.array([profile(p)[0] for p in grid])
    k = int(np.argmin(rss))
    p = _golden(lambda q: profile(q)[0], grid[max(k - 1, 0)], grid[min(k + 1, GRID - 1)])
    rss_p, a, h = profile(p)
    jac = np.zeros((len(y), n_par))  # d y_hat / d (a_1..a_W, p)
    jac[np.arange(len(y)), idx] = h
    jac[:, -1] = a[idx] * (-np.log(n) * n**-p + np.log(m) * m**-p)
    dof = len(y) - n_par
    singular = np.linalg.svd(jac, compute_uv=False)
    if singular[-1] <= singular[0] * max(jac.shape) * np.finfo(float).eps:
        return Fit(law=law, n_points=len(y), reason="the points do not fix the exponent")
    cov = np.linalg.inv(jac.T @ jac) * (rss_p / dof)
    err = np.sqrt(np.diag(cov))
    names = [f"{amplitude}(N={int(w)})" for w in widths]
    return Fit(
        law=law,
        params={exponent: p / power, **dict(zip(names, map(float, a), strict=True))},
        errors={exponent: err[-1] / power, **dict(zip(names, map(float, err[:-1]), strict=True))},
        n_points=len(y),
        n_range=(float(widths.min()), float(widths.max())),
        dof=dof,
        r2=explained(y, a[idx] * h),
        paper={exponent: paper},
        flags=["edge"] if k in (0, GRID - 1) else [],  # replaced by _assess_finite_m
    )


def _assess_finite_m(fit: Fit, exponent: str, amplitude: str, extra: list[str]) -> Fit:
    why = []
    if fit.flags == ["edge"]:
        why.append(
            f"{exponent} = {fit.params[exponent]:.3g} is at the edge of the range searched "
            f"({SEARCH[0]:g} to {SEARCH[1]:g}): the points follow no power of n"
        )
    negative = [k.split("=")[1].rstrip(")") for k, v in fit.params.items() if "(N=" in k and v < 0]
    if negative:
        shown = ", ".join(negative[:4]) + (" ..." if len(negative) > 4 else "")
        why.append(f"{amplitude} < 0 at N = {shown}: averaging more nets did worse there")
    assessed = assess(fit.model_copy(update={"flags": []}), main=(exponent,), implausible=why)
    under = [f"underdetermined: {e}" for e in extra]
    return assessed.model_copy(update={"flags": under + assessed.flags})


def _golden(f, a: float, b: float, iterations: int = 60) -> float:  # noqa: ANN001
    """The minimum of a unimodal f on [a, b] (golden-section search, in log p)."""
    lo, hi = math.log(a), math.log(b)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = f(math.exp(c)), f(math.exp(d))
    for _ in range(iterations):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - ratio * (hi - lo)
            fc = f(math.exp(c))
        else:
            lo, c, fc = c, d, fd
            d = lo + ratio * (hi - lo)
            fd = f(math.exp(d))
    return math.exp((lo + hi) / 2)


def fit_ensembles(ensemble: pd.DataFrame, n_star: float | None) -> dict[str, Fit]:
    """The two laws of Fig. 4 on one series' rows of ensemble.parquet, widths above N* with
    at least MIN_MEMBERS members: ensemble_error (b) and ensemble_delta (g)."""
    if n_star is None:
        return {
            "ensemble_error": Fit(law=ENSEMBLE_ERROR, reason=NO_N_STAR),
            "ensemble_delta": Fit(law=ENSEMBLE_DELTA, reason=NO_N_STAR),
        }
    e = ensemble[(ensemble["n_params"] > n_star) & (ensemble["n_members"] >= MIN_MEMBERS)]
    n, m, w = e["n"], e["n_members"], e["n_params"]
    return {
        "ensemble_error": fit_finite_m(
            n,
            m,
            w,
            e["excess_error"],
            law=ENSEMBLE_ERROR,
            exponent="b",
            amplitude="B",
            paper=PAPER_B,
        ),
        "ensemble_delta": _by_construction(
            fit_finite_m(
                n,
                m,
                w,
                e["delta"] ** 2,
                law=ENSEMBLE_DELTA,
                exponent="g",
                amplitude="A",
                paper=PAPER_G,
                power=2.0,
            ),
            bool(e.loc[e["n"] < e["n_members"], "exact"].all()),
        ),
    }


def _by_construction(fit: Fit, every_subset: bool) -> Fit:
    """Averaged over every subset of M seeds, delta_n^2 = s^2 (1/n - 1/M) / ||grad f||^2
    holds exactly, whatever the seeds (a sampling-without-replacement identity): g = 1/2
    then says nothing, and the fit says so; A_N, the seeds' variance, is still measured."""
    if not fit.ok or not every_subset:
        return fit
    why = (
        "by construction: every subset of the M seeds was averaged, so the law holds "
        "exactly for any seeds; g = 1/2 is not a measurement, the amplitudes (the seeds' "
        "variance) are"
    )
    return fit.model_copy(update={"flags": [*fit.flags, why]})


def with_excess_inf(ensemble: pd.DataFrame, fit: Fit) -> pd.DataFrame:
    """One series' ensemble rows with excess_error_inf = eps_bar^n - eps_bar^inf, where
    eps_bar^inf = eps_bar^M - B_N M^-b from the fit (NaN at widths it did not fit, and
    everywhere when the fit is underdetermined or implausible: no extrapolation then)."""
    if not fit.trusted:
        return ensemble
    b = fit.params["b"]
    amp = ensemble["n_params"].map(lambda w: fit.amplitude(int(w))).astype(float)
    shift = amp * ensemble["n_members"].astype(float) ** -b
    return ensemble.assign(excess_error_inf=ensemble["excess_error"] + shift)
