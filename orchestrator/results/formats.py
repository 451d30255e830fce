"""How results read as text, the same in `show`, `reduce`, the report and the figures: one
missing-value mark, `converged` as k/n, numbers, and a fit's values, quality and flags."""

from __future__ import annotations

import math

from schemas.summary import Fit, JammingLine

MISSING = "—"  # a value that does not exist (no N*, no ensemble, a width not finished)


def number(value: object, spec: str = ".4g") -> str:
    """A number (int, float, numpy scalar) formatted, or MISSING for None and NaN."""
    if value is None:
        return MISSING
    x = float(value)  # type: ignore[arg-type]  # numbers only: a table cell, a fit value
    if not math.isfinite(x):
        return MISSING
    return format(int(x) if spec.endswith("d") else x, spec)


def k_of_n(k: object, n: object) -> str:
    """'3/4': k of n runs (MISSING without n)."""
    if number(n) == MISSING:
        return MISSING
    return f"{int(float(k or 0))}/{int(float(n))}"  # type: ignore[arg-type]


def fit_values(fit: Fit, *, amplitudes: bool = False) -> str:
    """'E0 = 1.23 ± 0.04, E1 = ...' (the per-width amplitudes of the ensemble laws only with
    `amplitudes`: there is one per width)."""
    shown = {k: v for k, v in fit.params.items() if amplitudes or "(N=" not in k}
    return ", ".join(
        f"{k} = {v:.4g} ± {number(fit.errors.get(k), '.2g')}" for k, v in shown.items()
    )


def fit_quality(fit: Fit) -> str:
    """'6 points, dof 3, chi2/dof 1.2, R^2 0.98' (what the fit has of these)."""
    parts = [f"{fit.n_points} points"]
    if fit.dof is not None:
        parts.append(f"dof {fit.dof}")
    if fit.chi2_dof is not None:
        parts.append(f"chi2/dof {number(fit.chi2_dof, '.3g')}")
    if fit.r2 is not None:
        parts.append(f"R^2 {number(fit.r2, '.3f')}")
    if fit.n_range is not None:
        parts.append(f"{fit.variable} in [{fit.n_range[0]:g}, {fit.n_range[1]:g}]")
    return ", ".join(parts)


def paper_comparison(fit: Fit) -> str:
    """'paper: alpha = 0.25' for the parameters the paper gives (empty if none)."""
    return ", ".join(f"paper: {k} = {v:g}" for k, v in fit.paper.items())


def line_points(line: JammingLine) -> list[str]:
    """Each P of a jamming line: 'P = 500: N* = 210 in (155, 210], half 180.2' and, for a
    P the fit left out, why."""
    found = []
    for q in line.points:
        text = f"P = {q.train_size}: N* = {number(q.n_star, 'd')}"
        if q.used:
            text += f" in ({q.n_below}, {q.n_star}]"
        text += f", half the runs {number(q.n_star_half, '.1f')}"
        found.append(text + ("" if q.used else f" (not fitted: {q.why})"))
    return found


def fit_line(name: str, fit: Fit) -> str:
    """One line of `show` and `reduce` for a fit: values, quality, the paper's value."""
    if not fit.ok:
        return f"fit {name}: none ({fit.reason})"
    paper = paper_comparison(fit)
    return (
        f"fit {name}: {fit.law}: {fit_values(fit)} ({fit_quality(fit)}"
        f"{'; ' + paper if paper else ''})"
    )
