"""Power-law fits of the paper's curves, with one-sigma uncertainties (pure: arrays in).

- gap:        eps_N - eps_bar_N = E0 N^(-1/2) + E1 N^(-3/4)          on N > N*
- error:      eps_N = eps_inf + B0 N^(-1/2) + B1 N^(-3/4)             on N > N*
- variance:   ||f - f_bar|| = A N^(-alpha), alpha free                on N > N*
- divergence: ||f|| = C (N/N* - 1)^(-beta)                            on N* < N <= window N*

The first two are linear in their parameters and fitted as they are, weighted by the
standard error of each point when every point has one (so that the small values at large N
count as much as the large ones near N*). The last two are straight lines in log-log and
fitted there. All four are linear least squares. Uncertainties are the square roots of the
diagonal of the covariance scaled by the residuals (as scipy's curve_fit with
absolute_sigma=False): they say how well the points fix the parameters, not whether the law
is right. A fit with fewer points than parameters + 1, or with points that do not fix the
parameters, is reported with its reason instead of numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from schemas.summary import DIVERGENCE, ERROR, GAP, VARIANCE, Fit

DIVERGENCE_WINDOW = 4.0  # "just above N*": N <= 4 N*


def _least_squares(
    columns: list[np.ndarray], y: np.ndarray, sigma: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Values and one-sigma errors of y ~ sum_k p_k columns[k], weighted by 1/sigma; None
    when the points do not fix the parameters (the columns are collinear on them).

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
    reduced_chi2 = float(residual @ residual) / (len(y) - a.shape[1])
    cov = (vt.T / singular**2) @ vt * reduced_chi2
    return values, np.sqrt(np.diag(cov))


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(intercept, slope) and their errors of y = intercept + slope x, unweighted."""
    return _least_squares([np.ones_like(x), x], y, None)


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


def fit_gap(
    n: np.ndarray, gap: np.ndarray, *, n_min: float | None, sigma: np.ndarray | None = None
) -> Fit:
    """E0, E1 of eps_N - eps_bar_N = E0 N^-1/2 + E1 N^-3/4 on N > n_min (N*)."""
    n, gap = np.asarray(n, float), np.asarray(gap, float)
    keep = _above(n, n_min) & np.isfinite(gap)
    x, y, failed = _select(n, gap, keep, GAP, 2)
    if failed:
        return failed
    solved = _least_squares([x**-0.5, x**-0.75], y, _weights(sigma, keep))
    if solved is None:
        return _unfixed(GAP, x)
    values, errors = solved
    names = ("E0", "E1")
    return _result(GAP, _named(names, values), _named(names, errors), x)


def fit_error(
    n: np.ndarray, error: np.ndarray, *, n_min: float | None, sigma: np.ndarray | None = None
) -> Fit:
    """eps_inf, B0, B1 of eps_N = eps_inf + B0 N^-1/2 + B1 N^-3/4 on N > n_min (N*)."""
    n, error = np.asarray(n, float), np.asarray(error, float)
    keep = _above(n, n_min) & np.isfinite(error)
    x, y, failed = _select(n, error, keep, ERROR, 3)
    if failed:
        return failed
    solved = _least_squares([np.ones_like(x), x**-0.5, x**-0.75], y, _weights(sigma, keep))
    if solved is None:
        return _unfixed(ERROR, x)
    values, errors = solved
    names = ("eps_inf", "B0", "B1")
    return _result(ERROR, _named(names, values), _named(names, errors), x)


def fit_variance(n: np.ndarray, distance: np.ndarray, *, n_min: float | None) -> Fit:
    """A, alpha of ||f - f_bar|| = A N^-alpha on N > n_min, a line in log-log."""
    n, distance = np.asarray(n, float), np.asarray(distance, float)
    keep = _above(n, n_min) & (distance > 0)
    x, y, failed = _select(n, distance, keep, VARIANCE, 2)
    if failed:
        return failed
    solved = _line_fit(np.log(x), np.log(y))
    if solved is None:
        return _unfixed(VARIANCE, x)
    (log_a, slope), (log_a_err, slope_err) = solved
    values = {"A": math.exp(log_a), "alpha": -slope}
    return _result(VARIANCE, values, {"A": values["A"] * log_a_err, "alpha": slope_err}, x)


def fit_divergence(
    n: np.ndarray, f_norm: np.ndarray, *, n_star: float | None, window: float = DIVERGENCE_WINDOW
) -> Fit:
    """C, beta of ||f|| = C (N/N* - 1)^-beta on N* < N <= window N*, a line in log-log."""
    n, f_norm = np.asarray(n, float), np.asarray(f_norm, float)
    if n_star is None:
        return Fit(law=DIVERGENCE, reason="no N*: no width reached zero loss with every seed")
    keep = (n > n_star) & (n <= window * n_star) & (f_norm > 0)
    x, y, failed = _select(n, f_norm, keep, DIVERGENCE, 2)
    if failed:
        failed.reason = f"{failed.reason} in N* < N <= {window:g} N*"
        return failed
    solved = _line_fit(np.log(x / n_star - 1.0), np.log(y))
    if solved is None:
        return _unfixed(DIVERGENCE, x)
    (log_c, slope), (log_c_err, slope_err) = solved
    values = {"C": math.exp(log_c), "beta": -slope}
    return _result(DIVERGENCE, values, {"C": values["C"] * log_c_err, "beta": slope_err}, x)


def _result(law: str, values: dict[str, float], errors: dict[str, float], x: np.ndarray) -> Fit:
    return Fit(
        law=law,
        params={k: float(v) for k, v in values.items()},
        errors={k: float(v) for k, v in errors.items()},
        n_points=len(x),
        n_range=(float(x.min()), float(x.max())),
    )


def _named(names: tuple[str, ...], values: np.ndarray) -> dict[str, float]:
    return dict(zip(names, map(float, values), strict=True))


def fit_curves(curves: pd.DataFrame, n_star: float | None) -> dict[str, Fit]:
    """Every fit of one architecture's rows of curves.parquet (N* from jamming_points; none
    without it, since every law holds above N* only).

    Point weights for the error fits are standard errors over seeds (std / sqrt(n_seeds));
    the gap has no per-width error of its own, so it borrows that of the mean error."""
    if n_star is None:
        why = "no N*: no width reached zero loss with every seed"
        laws = {"gap": GAP, "error": ERROR, "variance": VARIANCE, "divergence": DIVERGENCE}
        return {name: Fit(law=law, reason=why) for name, law in laws.items()}
    c = curves.sort_values("n_params")
    n = c["n_params"].to_numpy(float)
    sem = (c["test_error_std"] / np.sqrt(c["n_seeds"])).to_numpy(float)
    return {
        "gap": fit_gap(n, c["gap"].to_numpy(float), n_min=n_star, sigma=sem),
        "error": fit_error(n, c["test_error_mean"].to_numpy(float), n_min=n_star, sigma=sem),
        "variance": fit_variance(n, np.sqrt(c["f_var"].to_numpy(float)), n_min=n_star),
        "divergence": fit_divergence(n, c["f_norm"].to_numpy(float), n_star=n_star),
    }
