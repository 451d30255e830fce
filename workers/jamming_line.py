"""The jamming line N*(P): when `train_size` is a sweep axis, a fit N* = c P^a per
architecture and per point of the other axes (pure: curves in, schemas.summary.JammingLine
out).

Each P's series has its N* (workers.reduce.jamming: the smallest N from which every width
has all its runs at zero loss) and, when the grid brackets it, the N of the width just
below, n_below: the threshold at which that P jams lies in (n_below, N*]. The fit is a line
in log-log through the brackets' geometric centres, y = log sqrt(n_below N*), weighted by
their half-widths in log, s = log(N* / n_below) / 2, taken as absolute errors (the true
threshold lies within +-s of the centre); the covariance is that of weighted least squares
with those errors, scaled up by chi^2/dof when the points scatter more than their brackets
allow (never down: a line that happens to pass through three centres says nothing finer
than the brackets). A P whose N* is above the sweep (the largest width not jammed) or below
it (every width jammed: N* is only an upper bound) is left out, with why.

Quality as the other fits (workers.fits.assess): dof = points - 2; underdetermined with
fewer than 3 points (dof 0: the line passes through both, nothing tests the law) or an
error of a larger than a; implausible when a <= 0 (N* not growing with P); "unlike the
paper" when a is more than 3 sigma from 1 (the jamming papers that the paper cites find N*
growing about linearly with P).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from schemas.axes import AXES, point_label
from schemas.summary import JAMMING_LINE, Fit, JammingLine, LinePoint
from workers.fits import assess, explained
from workers.reduce import Jamming, jamming, series_name, series_of, with_point

AXIS = "train_size"
PAPER_A = 1.0  # N* ~ P (the jamming papers the paper cites)
ABOVE = "N* is above the sweep (its largest width is not jammed): add larger widths"
BELOW = (
    "N* is below the sweep (every width is jammed, so N* is only an upper bound): "
    "add smaller widths"
)


def jamming_lines(curves: pd.DataFrame) -> dict[str, JammingLine]:
    """N*(P) and its fit for every architecture and point of the other axes, keyed as
    'fc5' (train_size the only axis) or 'fc5 lr_max=0.01'; empty when train_size is not
    an axis of the sweep (no column of its own in `curves`)."""
    if AXIS not in curves.columns or curves.empty:
        return {}
    curves = with_point(curves)
    named = {part.split("=")[0] for label in curves["point"].unique() for part in label.split()}
    others = [a for a in AXES if a in named and a != AXIS]  # the other axes that vary
    found = jamming(curves)
    lines: dict[str, list[LinePoint]] = {}
    for name, rows in series_of(curves):
        first = rows.iloc[0]
        other = {a: _plain(first[a]) for a in others}
        key = series_name({"arch": first["arch"], "point": point_label(other)})
        lines.setdefault(key, []).append(_line_point(name, rows, found[name]))
    return {
        key: JammingLine(fit=fit_jamming_line(points), points=sorted(points, key=_p))
        for key, points in lines.items()
    }


def _p(point: LinePoint) -> int:
    return point.train_size


def _plain(value: object) -> object:
    """A numpy scalar as the Python number it holds (so a label reads 0.001, not np.float64)."""
    return value.item() if isinstance(value, np.generic) else value


def _line_point(name: str, rows: pd.DataFrame, j: Jamming) -> LinePoint:
    p = int(rows[AXIS].iloc[0])
    point = LinePoint(train_size=p, series=name, n_star=j.n_star, n_star_half=j.n_star_half)
    if j.n_star is None:
        return point.model_copy(update={"why": ABOVE})
    if j.bracket is None:
        return point.model_copy(update={"why": BELOW})
    below = rows.loc[rows["width"].astype(float) == j.bracket[0], "n_params"]
    return point.model_copy(update={"n_below": int(below.iloc[0]), "used": True})


def fit_jamming_line(points: list[LinePoint]) -> Fit:
    """c, a of N* = c P^a through the bracketed points (see the module's docstring)."""
    used = [q for q in points if q.used and q.n_below is not None and q.n_star is not None]
    if len(used) < 2:
        return Fit(
            law=JAMMING_LINE,
            n_points=len(used),
            variable="P",
            reason=f"{len(used)} value(s) of P with a bracketed N*; need at least 2 "
            "(3 to test the law)",
        )
    p = np.array([q.train_size for q in used], float)
    lo = np.log([float(q.n_below) for q in used])  # type: ignore[arg-type]
    hi = np.log([float(q.n_star) for q in used])  # type: ignore[arg-type]
    x, y, s = np.log(p), (lo + hi) / 2, (hi - lo) / 2  # (points,)
    a_w = np.column_stack([np.ones_like(x), x]) / s[:, None]  # the weighted design matrix
    values, *_ = np.linalg.lstsq(a_w, y / s, rcond=None)
    residual = y / s - a_w @ values
    dof = len(used) - 2
    chi2_dof = float(residual @ residual) / dof if dof > 0 else None
    cov = np.linalg.inv(a_w.T @ a_w) * max(1.0, chi2_dof or 0.0)
    (log_c, a), (log_c_err, a_err) = values, np.sqrt(np.diag(cov))
    c = math.exp(log_c)
    fit = Fit(
        law=JAMMING_LINE,
        params={"c": c, "a": float(a)},
        errors={"c": c * float(log_c_err), "a": float(a_err)},
        n_points=len(used),
        n_range=(float(p.min()), float(p.max())),
        dof=dof,
        r2=explained(y, values[0] + values[1] * x, 1.0 / s),
        chi2_dof=chi2_dof,
        paper={"a": PAPER_A},
        variable="P",
    )
    why = [f"a = {a:.3g} <= 0: N* does not grow with P"] if a <= 0 else []
    return assess(fit, main=("a",), implausible=why, min_dof=1)
