"""Power-law fits of the paper's curves, with one-sigma uncertainties (pure: arrays in).

- gap:        eps_N - eps_bar_N = E0 N^(-1/2) + E1 N^(-3/4)          on N > N*
- error:      eps_N = eps_inf + B0 N^(-1/2) + B1 N^(-3/4)             on N > N*
- variance:   ||f - f_bar|| = A N^(-alpha), alpha free                on N > N*
- divergence: ||f|| = C (N/N* - 1)^(-beta)                            on N* < N <= window N*

The first two are linear in their parameters and fitted as they are, weighted by the
standard error of each point when every point has one (so that the small values at large N
count as much as the large ones near N*). The last two are straight lines in log-log and
fitted there. Uncertainties are the square roots of the diagonal of scipy's covariance,
scaled by the residuals (absolute_sigma=False): they say how well the points fix the
parameters, not whether the law is right. A fit with fewer points than parameters + 1
is reported with its reason instead of numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

DIVERGENCE_WINDOW = 4.0  # "just above N*": N <= 4 N*


@dataclass
class Fit:
    """One fitted law: parameter values and one-sigma errors by name, and where it holds."""

    law: str
    params: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    n_points: int = 0
    n_range: tuple[float, float] | None = None
    reason: str | None = None  # why there are no numbers

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict:
        out = asdict(self)
        out["n_range"] = list(self.n_range) if self.n_range else None
        return out

    def predict(self, n: np.ndarray, n_star: float | None = None) -> np.ndarray:
        """The fitted curve at N (NaN when the fit failed)."""
        if not self.ok:
            return np.full(np.shape(n), np.nan)
        p = self.params
        n = np.asarray(n, dtype=float)
        if self.law == GAP:
            return gap_law(n, p["E0"], p["E1"])
        if self.law == ERROR:
            return error_law(n, p["eps_inf"], p["B0"], p["B1"])
        if self.law == VARIANCE:
            return p["A"] * n ** (-p["alpha"])
        assert n_star is not None
        return p["C"] * (n / n_star - 1.0) ** (-p["beta"])


GAP = "eps_N - eps_bar_N = E0 N^-1/2 + E1 N^-3/4"
ERROR = "eps_N = eps_inf + B0 N^-1/2 + B1 N^-3/4"
VARIANCE = "||f - f_bar|| = A N^-alpha"
DIVERGENCE = "||f|| = C (N/N* - 1)^-beta"


def gap_law(n: np.ndarray, e0: float, e1: float) -> np.ndarray:
    return e0 * n**-0.5 + e1 * n**-0.75


def error_law(n: np.ndarray, eps_inf: float, b0: float, b1: float) -> np.ndarray:
    return eps_inf + b0 * n**-0.5 + b1 * n**-0.75


def _line(x: np.ndarray, intercept: float, slope: float) -> np.ndarray:
    return intercept + slope * x


def _curve_fit(
    model: Callable, x: np.ndarray, y: np.ndarray, sigma: np.ndarray | None, n_params: int
) -> tuple[np.ndarray, np.ndarray]:
    """curve_fit from a zero start (the models are linear in their parameters)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)  # inf covariance: reported as NaN
        values, cov = curve_fit(
            model, x, y, p0=np.zeros(n_params), sigma=sigma, absolute_sigma=False
        )
    errors = (
        np.sqrt(np.clip(np.diag(cov), 0, None))
        if np.all(np.isfinite(cov))
        else np.full(n_params, np.nan)
    )
    return values, errors


def _select(
    n: np.ndarray, y: np.ndarray, keep: np.ndarray, law: str, n_params: int
) -> tuple[np.ndarray, np.ndarray, Fit | None]:
    keep = keep & np.isfinite(y) & np.isfinite(n)
    if keep.sum() < n_params + 1:
        return (
            n[keep],
            y[keep],
            Fit(
                law,
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
    values, errors = _curve_fit(gap_law, x, y, _weights(sigma, keep), 2)
    return _result(GAP, ("E0", "E1"), values, errors, x)


def fit_error(
    n: np.ndarray, error: np.ndarray, *, n_min: float | None, sigma: np.ndarray | None = None
) -> Fit:
    """eps_inf, B0, B1 of eps_N = eps_inf + B0 N^-1/2 + B1 N^-3/4 on N > n_min (N*)."""
    n, error = np.asarray(n, float), np.asarray(error, float)
    keep = _above(n, n_min) & np.isfinite(error)
    x, y, failed = _select(n, error, keep, ERROR, 3)
    if failed:
        return failed
    values, errors = _curve_fit(error_law, x, y, _weights(sigma, keep), 3)
    return _result(ERROR, ("eps_inf", "B0", "B1"), values, errors, x)


def fit_variance(n: np.ndarray, distance: np.ndarray, *, n_min: float | None) -> Fit:
    """A, alpha of ||f - f_bar|| = A N^-alpha on N > n_min, a line in log-log."""
    n, distance = np.asarray(n, float), np.asarray(distance, float)
    keep = _above(n, n_min) & (distance > 0)
    x, y, failed = _select(n, distance, keep, VARIANCE, 2)
    if failed:
        return failed
    (log_a, slope), (log_a_err, slope_err) = _curve_fit(_line, np.log(x), np.log(y), None, 2)
    return Fit(
        VARIANCE,
        {"A": math.exp(log_a), "alpha": -slope},
        {"A": math.exp(log_a) * log_a_err, "alpha": slope_err},
        len(x),
        (float(x.min()), float(x.max())),
    )


def fit_divergence(
    n: np.ndarray, f_norm: np.ndarray, *, n_star: float | None, window: float = DIVERGENCE_WINDOW
) -> Fit:
    """C, beta of ||f|| = C (N/N* - 1)^-beta on N* < N <= window N*, a line in log-log."""
    n, f_norm = np.asarray(n, float), np.asarray(f_norm, float)
    if n_star is None:
        return Fit(DIVERGENCE, reason="no N*: no width reached zero loss with every seed")
    keep = (n > n_star) & (n <= window * n_star) & (f_norm > 0)
    x, y, failed = _select(n, f_norm, keep, DIVERGENCE, 2)
    if failed:
        failed.reason = f"{failed.reason} in N* < N <= {window:g} N*"
        return failed
    (log_c, slope), (log_c_err, slope_err) = _curve_fit(
        _line, np.log(x / n_star - 1.0), np.log(y), None, 2
    )
    return Fit(
        DIVERGENCE,
        {"C": math.exp(log_c), "beta": -slope},
        {"C": math.exp(log_c) * log_c_err, "beta": slope_err},
        len(x),
        (float(x.min()), float(x.max())),
    )


def _result(
    law: str, names: tuple[str, ...], values: np.ndarray, errors: np.ndarray, x: np.ndarray
) -> Fit:
    return Fit(
        law,
        dict(zip(names, map(float, values), strict=True)),
        dict(zip(names, map(float, errors), strict=True)),
        len(x),
        (float(x.min()), float(x.max())),
    )


def fit_curves(curves: pd.DataFrame, n_star: float | None) -> dict[str, Fit]:
    """Every fit of one architecture's rows of curves.parquet (N* from jamming_points; none
    without it, since every law holds above N* only).

    Point weights for the error fits are standard errors over seeds (std / sqrt(n_seeds));
    the gap has no per-width error of its own, so it borrows that of the mean error."""
    if n_star is None:
        why = "no N*: no width reached zero loss with every seed"
        laws = {"gap": GAP, "error": ERROR, "variance": VARIANCE, "divergence": DIVERGENCE}
        return {name: Fit(law, reason=why) for name, law in laws.items()}
    c = curves.sort_values("n_params")
    n = c["n_params"].to_numpy(float)
    sem = (c["test_error_std"] / np.sqrt(c["n_seeds"])).to_numpy(float)
    return {
        "gap": fit_gap(n, c["gap"].to_numpy(float), n_min=n_star, sigma=sem),
        "error": fit_error(n, c["test_error_mean"].to_numpy(float), n_min=n_star, sigma=sem),
        "variance": fit_variance(n, np.sqrt(c["f_var"].to_numpy(float)), n_min=n_star),
        "divergence": fit_divergence(n, c["f_norm"].to_numpy(float), n_star=n_star),
    }


def fits_from_json(raw: dict) -> Fit:
    """A Fit back from summary.json."""
    n_range = tuple(raw["n_range"]) if raw.get("n_range") else None
    return Fit(
        raw["law"],
        raw.get("params", {}),
        raw.get("errors", {}),
        raw.get("n_points", 0),
        n_range,
        raw.get("reason"),
    )  # type: ignore[arg-type]
