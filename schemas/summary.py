"""summary.json: what `jamsweep reduce` found in a sweep (N*, the fitted laws and their
quality, warnings), written and read through `Summary`; `Fit` is one fitted law, and the
laws themselves are here too so that a Fit read back from the file can be drawn
(`Fit.predict`).

Written by one version and read by another, so the models are lenient (unknown keys are
ignored). NaN errors (a fit whose covariance is undefined) are kept as NaN, as json.dumps
writes them."""

from __future__ import annotations

import enum
import json

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import JamsweepError

GAP = "eps_N - eps_bar_N = E0 N^-1/2 + E1 N^-3/4"
ERROR = "eps_N = eps_inf + B0 N^-1/2 + B1 N^-3/4"
VARIANCE = "||f - f_bar|| = A N^-alpha"
DIVERGENCE = "||f|| = C (N/N* - 1)^-beta"
GRADIENT = "||grad f|| = C0 + C1 N^-1/4"
ENSEMBLE_ERROR = "eps_bar^n - eps_bar^M = B_N (n^-b - M^-b)"
ENSEMBLE_DELTA = "delta_n^2 = A_N (n^-2g - M^-2g)"
JAMMING_LINE = "N* = c P^a"
FLAG_KINDS = ("underdetermined", "implausible", "unlike the paper", "by construction")


def gap_law(n: np.ndarray, e0: float, e1: float) -> np.ndarray:
    return e0 * n**-0.5 + e1 * n**-0.75


def error_law(n: np.ndarray, eps_inf: float, b0: float, b1: float) -> np.ndarray:
    return eps_inf + b0 * n**-0.5 + b1 * n**-0.75


class EnsembleOver(str, enum.Enum):
    """Which seeds of a width are averaged into f_bar."""

    CONVERGED = "converged"  # those that reached zero training loss (the paper's choice)
    ALL = "all"


class Fit(BaseModel):
    """One fitted law: parameter values and one-sigma errors by name, where it holds, and how
    good it is (workers.fits says how each is computed)."""

    model_config = ConfigDict(extra="ignore")

    law: str
    params: dict[str, float] = {}
    errors: dict[str, float] = {}
    n_points: int = 0
    n_range: tuple[float, float] | None = None  # the smallest and largest N fitted
    reason: str | None = None  # why there are no numbers
    dof: int | None = None  # degrees of freedom: points - parameters
    r2: float | None = None  # fraction of the points' variance the law explains
    chi2_dof: float | None = None  # chi^2 / dof with the points' errors (weighted fits)
    flags: list[str] = []  # "underdetermined: ...", "implausible: ...", "unlike the paper: ...",
    # "by construction: ..." (a value the method forces, not a measurement)
    paper: dict[str, float] = {}  # the paper's value of a parameter, to compare with
    variable: str = "N"  # what n_range and predict() are in: N, or P for the jamming line

    @property
    def ok(self) -> bool:
        return self.reason is None

    def flagged(self, kind: str) -> list[str]:
        """The flags of one kind of FLAG_KINDS."""
        return [f for f in self.flags if f.startswith(kind)]

    @property
    def trusted(self) -> bool:
        """Fitted, and neither underdetermined nor implausible."""
        return self.ok and not self.flagged("underdetermined") and not self.flagged("implausible")

    def predict(self, n: np.ndarray, n_star: float | None = None) -> np.ndarray:
        """The fitted curve at N. A fit that was not made (`ok` is False) has no curve:
        JamsweepError with its reason, rather than NaNs that would plot as nothing.

        >>> fit = open_sweep("demo").summary().fits["fc5"]["gap"]
        >>> fit.predict(np.geomspace(300, 3000, 20)) if fit.ok else fit.reason
        """
        if not self.ok:
            raise JamsweepError(
                f"the fit of {self.law!r} was not made ({self.reason}), so it predicts "
                "nothing; check `fit.ok` (and `fit.reason`) first"
            )
        p = self.params
        n = np.asarray(n, dtype=float)
        if self.law == GAP:
            return gap_law(n, p["E0"], p["E1"])
        if self.law == ERROR:
            return error_law(n, p["eps_inf"], p["B0"], p["B1"])
        if self.law == VARIANCE:
            return p["A"] * n ** (-p["alpha"])
        if self.law == GRADIENT:
            return p["C0"] + p["C1"] * n**-0.25
        if self.law == JAMMING_LINE:  # n is P here
            return p["c"] * n ** p["a"]
        if self.law in (ENSEMBLE_ERROR, ENSEMBLE_DELTA):
            raise ValueError(f"the law {self.law!r} is drawn per width: see Fit.amplitude")
        if n_star is None:
            raise ValueError(f"the law {self.law!r} needs n_star")
        return p["C"] * (n / n_star - 1.0) ** (-p["beta"])

    def amplitude(self, n_params: int) -> float | None:
        """B_N or A_N of an ensemble law at the width of N weights (None when not fitted)."""
        for name in ("B", "A"):
            value = self.params.get(f"{name}(N={n_params})")
            if value is not None:
                return value
        return None


class LinePoint(BaseModel):
    """One value of P on a jamming line: its series' N*, the N of the width just below
    (the bracket of the jamming threshold is (n_below, n_star]), and whether the fit used it."""

    model_config = ConfigDict(extra="ignore")

    train_size: int
    series: str  # the summary's key of its series ("fc5 train_size=500")
    n_star: int | None = None
    n_below: int | None = None  # N of the largest width under N* (None without a bracket)
    n_star_half: float | None = None
    used: bool = False
    why: str | None = None  # why the fit left it out


class JammingLine(BaseModel):
    """N*(P) of one architecture at one point of the other axes: the fit N* = c P^a
    (workers.jamming_line says how) and the points it was made of."""

    model_config = ConfigDict(extra="ignore")

    fit: Fit
    points: list[LinePoint] = []


class Summary(BaseModel):
    """summary.json of a reduced sweep. Maps are keyed by architecture name. Every field but
    the sweep has a default, so that a file from an earlier version still reads."""

    model_config = ConfigDict(extra="ignore", use_enum_values=True)

    sweep: str
    n_runs: int = Field(default=0, description="runs in the manifest")
    n_done: int = Field(default=0, description="finished runs that were reduced")
    ensemble_over: EnsembleOver = EnsembleOver.CONVERGED
    max_subsets: int = Field(default=0, description="seed subsets averaged per n in ensemble")
    n_star: dict[str, int | None] = Field(
        default={}, description="smallest N from which every width has all its runs at zero loss"
    )
    n_star_half: dict[str, float | None] = Field(default={}, description="N of half the runs")
    n_star_bracket: dict[str, tuple[float, float] | None] = Field(
        default={}, description="the widths (just below N*, at N*)"
    )
    smallest_jammed_n: dict[str, int | None] = Field(
        default={}, description="only where it differs from N*"
    )
    fits: dict[str, dict[str, Fit]] = Field(
        default={},
        description="arch -> gap, error, variance, divergence, gradient, ensemble_error, "
        "ensemble_delta -> Fit",
    )
    reduced_at: str = Field(default="", description="UTC, ISO 8601")
    budget: dict[str, str] = Field(
        default={}, description="arch -> why N* may be the step budget's (only where it may)"
    )
    notes: list[str] = Field(default=[], description="what the reducer could not compute, and why")
    jamming_line: dict[str, JammingLine] = Field(
        default={},
        description="arch [other axes' point] -> N*(P) and its fit, when train_size is an axis",
    )

    def to_json(self) -> str:
        """The file's text: json.dumps of the plain data (NaN stays NaN), indented."""
        return json.dumps(self.model_dump(mode="python"), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "summary.json") -> Summary:
        try:
            return cls.model_validate(json.loads(text))
        except ValueError as exc:  # not JSON, or not a summary (pydantic's ValidationError)
            first = str(exc).strip().splitlines()
            raise JamsweepError(
                f"{source} cannot be read ({' '.join(first[:3])}); write it again with "
                "`jamsweep reduce SWEEP`"
            ) from None
