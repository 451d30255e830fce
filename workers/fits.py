"""Power-law fits of the paper's curves, with one-sigma uncertainties and their quality
(pure: arrays in, schemas.summary.Fit out).

- gap:        eps_N - eps_bar_N = E0 N^(-1/2) + E1 N^(-3/4)           on N > N*
- error:      eps_N = eps_inf + B0 N^(-1/2) + B1 N^(-3/4)              on N > N*
- variance:   ||f - f_bar|| = A N^(-alpha), alpha free (paper: 1/4)    on N > N*
- divergence: ||f|| = C (N/N* - 1)^(-beta) (paper: beta = 1)           on N* < N <= 4 N*
- gradient:   median ||grad f|| = C0 + C1 N^(-1/4)                     on N > N*

The error, gap and gradient laws are linear in their parameters and fitted as they are;
the error and gap weighted by the standard error of each point when every point has one (so
that the small values at large N count as much as the large ones near N*). The variance and
divergence laws are straight lines in log-log and fitted there. All are linear least
squares. Uncertainties are the square roots of the diagonal of the covariance scaled by the
residuals (as scipy's curve_fit with absolute_sigma=False): they say how well the points fix
the parameters, not whether the law is right. That is what the quality says:

- dof, the points minus the parameters; r2, the fraction of the points' variance (weighted,
  in the space fitted) that the law explains; chi2_dof, chi^2 per degree of freedom with the
  points' own errors (weighted fits only: near 1 when the law describes the points within
  their errors);
- flags, sentences that start with "underdetermined" (fewer than 2 degrees of freedom, or a
  parameter whose error exceeds its value), "implausible" (a value the law cannot have: an
  asymptote outside the data's range or below zero, an exponent of the wrong sign), or
  "unlike the paper" (an exponent more than 3 sigma from the paper's value).

A fit with fewer points than parameters + 1, or with points that do not fix the
parameters, is reported with its reason instead of numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from schemas.summary import DIVERGENCE, ERROR, GAP, GRADIENT, VARIANCE, Fit

DIVERGENCE_WINDOW = 4.0  # "just above N*": N <= 4 N*
PAPER = {"alpha": 0.25, "beta": 1.0}  # the paper's exponents (arXiv 1901.01608)
UNLIKE_SIGMAS = 3.0  # "unlike the paper" beyond this many standard errors
NO_N_STAR = "no N*: no width reached zero loss with every seed"


@dataclass(frozen=True)
class Solved:
    """A least-squares solution: values and errors (parameters,), and its quality."""

    values: np.ndarray
    errors: np.ndarray
    dof: int
    r2: float | None
    chi2_dof: float | None  # with absolute point errors; None for unweighted fits


def least_squares(
    columns: list[np.ndarray], y: np.ndarray, sigma: np.ndarray | None
) -> Solved | None:
    """y ~ sum_k p_k columns[k], weighted by 1/sigma; None when the points do not fix the
    parameters (the columns are collinear on them).

    The laws are linear in their parameters, so this is linear least squares through one
    SVD of the weighted design matrix A_w = U S V^T, not an iterative fit: values
    V S^-1 U^T y_w. The covariance is that of scipy's curve_fit with absolute_sigma=False:
    (A_w^T A_w)^-1 = V S^-2 V^T times the reduced chi^2 of the residuals."""
    a = np.column_stack(columns)  # (points, parameters)
    w = np.ones(len(y)) if sigma is None else 1.0 / sigma
    a_w, y_w = a * w[:, None], y * w
    u, singular, vt = np.linalg.svd(a_w, full_matrices=False)
    if singular[-1] <= singular[0] * max(a.shape) * np.finfo(float).eps:  # lstsq's rank rule
        return None
    values = vt.T @ ((u.T @ y_w) / singular)
    residual = y_w - a_w @ values
    dof = len(y) - a.shape[1]
    chi2 = float(residual @ residual)
    cov = (vt.T / singular**2) @ vt * (chi2 / dof)
    return Solved(
        values,
        np.sqrt(np.diag(cov)),
        dof,
        explained(y, a @ values, w),
        chi2 / dof if sigma is not None else None,
    )


def explained(y: np.ndarray, fitted: np.ndarray, w: np.ndarray | None = None) -> float | None:
    """R^2 = 1 - sum w^2 (y - fitted)^2 / sum w^2 (y - mean_w y)^2 (None if y is constant)."""
    w2 = np.ones(len(y)) if w is None else w**2
    centre = float(np.sum(w2 * y) / np.sum(w2))
    total = float(np.sum(w2 * (y - centre) ** 2))
    if total <= 0:
        return None
    return 1.0 - float(np.sum(w2 * (y - fitted) ** 2)) / total


def _line_fit(x: np.ndarray, y: np.ndarray) -> Solved | None:
    """(intercept, slope) and their errors of y = intercept + slope x, unweighted."""
    return least_squares([np.ones_like(x), x], y, None)


def _unfixed(law: str, x: np.ndarray) -> Fit:
    return Fit(
        law=law,
        n_points=len(x),
        reason=f"{len(x)} points that do not fix the parameters (too few distinct N)",
    )


def _select(
    n: np.ndarray, y: np.ndarray, keep: np.ndarray, law: str, n_params: int
) -> tuple[np.ndarray, np.ndarray, Fit | None]:
    keep = keep & np.isfinite(y) & np.isfinite(n)
    if keep.sum() < n_params + 1:
        return (
            n[keep],
            y[keep],
            Fit(
                law=law,
                n_points=int(keep.sum()),
                reason=f"{int(keep.sum())} usable point(s); need at least {n_params + 1}",
            ),
        )
    return n[keep], y[keep], None


def _weights(sigma: np.ndarray | None, keep: np.ndarray) -> np.ndarray | None:
    if sigma is None:
        return None
    s = np.asarray(sigma, dtype=float)[keep]
    return s if np.all(np.isfinite(s)) and np.all(s > 0) else None


def _above(n: np.ndarray, n_min: float | None) -> np.ndarray:
    return np.ones(len(n), dtype=bool) if n_min is None else n > n_min


# -- the quality of a fit -----------------------------------------------------------------


def assess(fit: Fit, *, main: tuple[str, ...], implausible: list[str], min_dof: int = 2) -> Fit:
    """The fit with its flags: underdetermined (dof < min_dof, or a `main` parameter whose
    error exceeds its value), the law's own `implausible` findings, and "unlike the paper"
    for each parameter of `fit.paper` more than UNLIKE_SIGMAS errors away from it."""
    flags = []
    if fit.dof is not None and fit.dof < min_dof:
        flags.append(
            f"underdetermined: {len(fit.params)} parameters on {fit.n_points} points "
            f"({fit.dof} degree{'s' if fit.dof != 1 else ''} of freedom)"
        )
    for name in main:
        value, error = fit.params[name], fit.errors[name]
        if not math.isfinite(error) or error > abs(value):
            flags.append(
                f"underdetermined: {name} = {value:.3g} ± {error:.2g} is not fixed by the points"
            )
    flags += [f"implausible: {why}" for why in implausible]
    for name, paper in fit.paper.items():
        value, error = fit.params[name], fit.errors[name]
        if math.isfinite(error) and abs(value - paper) > UNLIKE_SIGMAS * error:
            away = abs(value - paper) / error if error > 0 else math.inf
            flags.append(
                f"unlike the paper: {name} = {value:.3g} ± {error:.2g}, {away:.1f} sigma "
                f"from the paper's {paper:g}"
            )
    return fit.model_copy(update={"flags": flags})


def _result(
    law: str,
    values: dict[str, float],
    errors: dict[str, float],
    x: np.ndarray,
    s: Solved,
    paper: dict[str, float] | None = None,
) -> Fit:
    return Fit(
        law=law,
        params={k: float(v) for k, v in values.items()},
        errors={k: float(v) for k, v in errors.items()},
        n_points=len(x),
        n_range=(float(x.min()), float(x.max())),
        dof=s.dof,
        r2=s.r2,
        chi2_dof=s.chi2_dof,
        paper=paper or {},
    )


def _named(names: tuple[str, ...], values: np.ndarray) -> dict[str, float]:
    return dict(zip(names, map(float, values), strict=True))


def _linear(
    law: str,
    names: tuple[str, ...],
    basis: Callable[[np.ndarray], list[np.ndarray]],
    n: np.ndarray,
    y: np.ndarray,
    keep: np.ndarray,
    sigma: np.ndarray | None,
) -> tuple[Fit, np.ndarray, np.ndarray, np.ndarray] | Fit:
    """A law linear in its parameters `names`, y = sum_k p_k basis(N)[k], on the kept points:
    (the fit before assessment, the N, y and point errors fitted (0 when unweighted)), or
    the Fit that says why there is none."""
    mask = keep & np.isfinite(y) & np.isfinite(n)
    x, yk, failed = _select(n, y, mask, law, len(names))
    if failed:
        return failed
    weights = _weights(sigma, mask)
    solved = least_squares(basis(x), yk, weights)
    if solved is None:
        return _unfixed(law, x)
    fit = _result(law, _named(names, solved.values), _named(names, solved.errors), x, solved)
    return fit, x, yk, (weights if weights is not None else np.zeros(len(x)))


# -- the laws -----------------------------------------------------------------------------


def fit_gap(
    n: np.ndarray, gap: np.ndarray, *, n_min: float | None, sigma: np.ndarray | None = None
) -> Fit:
    """E0, E1 of eps_N - eps_bar_N = E0 N^-1/2 + E1 N^-3/4 on N > n_min (N*)."""
    n, gap = np.asarray(n, float), np.asarray(gap, float)
    done = _linear(
        GAP, ("E0", "E1"), lambda x: [x**-0.5, x**-0.75], n, gap, _above(n, n_min), sigma
    )
    if isinstance(done, Fit):
        return done
    fit = done[0]
    e0 = fit.params["E0"]
    why = [f"E0 = {e0:.3g} <= 0: the gap would turn negative at large N"] if e0 <= 0 else []
    return assess(fit, main=("E0",), implausible=why)


def fit_error(
    n: np.ndarray, error: np.ndarray, *, n_min: float | None, sigma: np.ndarray | None = None
) -> Fit:
    """eps_inf, B0, B1 of eps_N = eps_inf + B0 N^-1/2 + B1 N^-3/4 on N > n_min (N*).

    Implausible: eps_inf below 0, or above fitted errors by more than their own error (the
    asymptote of a curve that falls to it lies below its points)."""
    n, error = np.asarray(n, float), np.asarray(error, float)
    basis = lambda x: [np.ones_like(x), x**-0.5, x**-0.75]  # noqa: E731
    done = _linear(ERROR, ("eps_inf", "B0", "B1"), basis, n, error, _above(n, n_min), sigma)
    if isinstance(done, Fit):
        return done
    fit, x, y, sigma_k = done
    eps = fit.params["eps_inf"]
    why = []
    if eps < 0:
        why.append(f"the asymptote eps_inf = {eps:.3g} is below 0")
    under = y + sigma_k < eps
    above = int(np.sum(under))
    if above:
        largest = np.sort(x[under])
        where = f"N = {largest[0]:g}" if above == 1 else f"N = {largest[0]:g} ... {largest[-1]:g}"
        why.append(
            f"the asymptote eps_inf = {eps:.3g} lies above {above} of the {len(y)} fitted "
            f"errors ({where}, down to {y.min():.3g})"
        )
    return assess(fit, main=("eps_inf", "B0"), implausible=why)


def fit_variance(n: np.ndarray, distance: np.ndarray, *, n_min: float | None) -> Fit:
    """A, alpha of ||f - f_bar|| = A N^-alpha on N > n_min, a line in log-log (paper: 1/4)."""
    n, distance = np.asarray(n, float), np.asarray(distance, float)
    keep = _above(n, n_min) & (distance > 0)
    x, y, failed = _select(n, distance, keep, VARIANCE, 2)
    if failed:
        return failed
    solved = _line_fit(np.log(x), np.log(y))
    if solved is None:
        return _unfixed(VARIANCE, x)
    (log_a, slope), (log_a_err, slope_err) = solved.values, solved.errors
    values = {"A": math.exp(log_a), "alpha": -slope}
    errors = {"A": values["A"] * log_a_err, "alpha": slope_err}
    fit = _result(VARIANCE, values, errors, x, solved, {"alpha": PAPER["alpha"]})
    why = ["alpha <= 0: the outputs' spread over seeds grows with N"] if -slope <= 0 else []
    return assess(fit, main=("alpha",), implausible=why)


def fit_divergence(
    n: np.ndarray, f_norm: np.ndarray, *, n_star: float | None, window: float = DIVERGENCE_WINDOW
) -> Fit:
    """C, beta of ||f|| = C (N/N* - 1)^-beta on N* < N <= window N*, a line in log-log
    (paper: ||f|| ~ (N - N*)^-1, beta = 1)."""
    n, f_norm = np.asarray(n, float), np.asarray(f_norm, float)
    if n_star is None:
        return Fit(law=DIVERGENCE, reason=NO_N_STAR)
    keep = (n > n_star) & (n <= window * n_star) & (f_norm > 0)
    x, y, failed = _select(n, f_norm, keep, DIVERGENCE, 2)
    if failed:
        failed.reason = f"{failed.reason} in N* < N <= {window:g} N*"
        return failed
    solved = _line_fit(np.log(x / n_star - 1.0), np.log(y))
    if solved is None:
        return _unfixed(DIVERGENCE, x)
    (log_c, slope), (log_c_err, slope_err) = solved.values, solved.errors
    values = {"C": math.exp(log_c), "beta": -slope}
    errors = {"C": values["C"] * log_c_err, "beta": slope_err}
    fit = _result(DIVERGENCE, values, errors, x, solved, {"beta": PAPER["beta"]})
    why = ["beta <= 0: ||f|| does not diverge as N comes down to N*"] if -slope <= 0 else []
    return assess(fit, main=("beta",), implausible=why)


def fit_gradient(n: np.ndarray, grad: np.ndarray, *, n_min: float | None) -> Fit:
    """C0, C1 of median ||grad f|| = C0 + C1 N^-1/4 on N > n_min (paper Fig. 6A)."""
    n, grad = np.asarray(n, float), np.asarray(grad, float)
    basis = lambda x: [np.ones_like(x), x**-0.25]  # noqa: E731
    done = _linear(GRADIENT, ("C0", "C1"), basis, n, grad, _above(n, n_min), None)
    if isinstance(done, Fit):
        return done
    fit = done[0]
    c0 = fit.params["C0"]
    why = [f"the asymptote C0 = {c0:.3g} of a norm is below 0"] if c0 < 0 else []
    return assess(fit, main=("C0",), implausible=why)


def fit_curves(curves: pd.DataFrame, n_star: float | None) -> dict[str, Fit]:
    """Every fit of one series' rows of curves.parquet (N* from workers.reduce.jamming; none
    without it, since every law holds above N* only).

    Point weights for the error fits are standard errors over seeds (std / sqrt(n_seeds));
    the gap has no per-width error of its own, so it borrows that of the mean error."""
    laws = {
        "gap": GAP,
        "error": ERROR,
        "variance": VARIANCE,
        "divergence": DIVERGENCE,
        "gradient": GRADIENT,
    }
    if n_star is None:
        return {name: Fit(law=law, reason=NO_N_STAR) for name, law in laws.items()}
    c = curves.sort_values("n_params")
    n = c["n_params"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        sem = (c["test_error_std"] / np.sqrt(c["n_seeds"])).to_numpy(float)
    grad = c["grad_norm_median"] if "grad_norm_median" in c else c["grad_norm"]
    return {
        "gap": fit_gap(n, c["gap"].to_numpy(float), n_min=n_star, sigma=sem),
        "error": fit_error(n, c["test_error_mean"].to_numpy(float), n_min=n_star, sigma=sem),
        "variance": fit_variance(n, np.sqrt(c["f_var"].to_numpy(float)), n_min=n_star),
        "divergence": fit_divergence(n, c["f_norm"].to_numpy(float), n_star=n_star),
        "gradient": fit_gradient(n, grad.to_numpy(float), n_min=n_star),
    }
