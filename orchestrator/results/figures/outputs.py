"""The outputs f of the nets against N: their variance over seeds (the paper's Fig. 5), the
input gradient and the gap (Fig. 6), and the norm ||f|| at the end of training and at
earlier times (Fig. 7A, 7B)."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from orchestrator.results.figures.style import (
    AXIS_N,
    NothingToDraw,
    colour_bar,
    compose,
    finish,
    fit_box,
    fit_curve,
    fit_of,
    fitted,
    guide,
    mark_n_star,
    n_star_of,
    positive,
    series,
)
from orchestrator.results.formats import k_of_n
from schemas.summary import Summary
from workers.reduce import series_of


def fig5(curves: pd.DataFrame, summary: Summary) -> Figure:
    """Fig. 5: the variance of the outputs over initialisations, ||f − f̄||², at every width:
    f̄ is the mean of every finished seed of the width, converged or not, so the peak at
    jamming shows. Filled points: every seed of the width converged; open points: only k of
    n did (written beside them). With the fit ||f − f̄|| = A N^-α above N* (paper: α = 1/4).

    Example::

        fig = fig5(open_sweep("results/demo").curves(), open_sweep("results/demo").summary())
    """
    lines = series(curves)

    def variance(ax: Axes) -> None:
        boxes = []
        for s in lines:
            g = s.rows[np.isfinite(s.rows["f_var_all"]) & (s.rows["f_var_all"] > 0)]
            full = (g["n_converged"] == g["n_runs"]).to_numpy()
            ax.plot(g["n_params"], g["f_var_all"], "-", color=s.colour, lw=1)
            ax.plot(
                g["n_params"][full],
                g["f_var_all"][full],
                "o",
                color=s.colour,
                ms=5,
                label=f"{s.label}: every seed converged",
            )
            ax.plot(
                g["n_params"][~full],
                g["f_var_all"][~full],
                "o",
                color=s.colour,
                ms=5,
                mfc="white",
                label=f"{s.label}: some seeds did not converge",
            )
            for _, r in g[~full].iterrows():
                ax.annotate(
                    k_of_n(r["n_converged"], r["n_seeds"]),
                    (r["n_params"], r["f_var_all"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=6.5,
                )
            fit = fitted(summary, s.name, "variance")
            fit_curve(ax, fit, s.colour, r"fit $A^2 N^{-2\alpha}$", transform=np.square)
            boxes.append((s.label, fit_of(summary, s.name, "variance")))
            mark_n_star(ax, n_star_of(summary, s.name), s.colour, rf"$N^*$ ({s.label})")
        fit_box(ax, boxes)
        seeds = sorted({int(v) for v in curves["n_seeds"] if v > 0})
        used = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]}"
        finish(
            ax,
            AXIS_N,
            r"$\|f - \bar f\|^2$",
            f"Fig. 5: output variance over the {used} finished seeds of each width",
            logy=True,
        )

    return compose(
        [variance],
        panel=(6.6, 4.6),
        columns=1,
        why_empty="no width has finished seeds whose outputs differ",
    )


def fig6(curves: pd.DataFrame, summary: Summary) -> Figure:
    """Fig. 6: A, the median over seeds of ||∇f|| against N with the fit C0 + C1 N^-1/4 above
    N*; B, the gap ε − ε̄ against δ (N ≥ N*); C, the gap against N with its fit
    E0 N^-1/2 + E1 N^-3/4.

    Example::

        fig = fig6(open_sweep("results/demo").curves(), open_sweep("results/demo").summary())
    """
    lines = series(curves)

    def gradient(ax: Axes) -> None:
        boxes = []
        for s in lines:
            ax.plot(
                *positive(s.rows["n_params"], s.rows["grad_norm_median"]),
                "o-",
                color=s.colour,
                ms=4,
                label=f"{s.label}: median over seeds",
            )
            fit = fitted(summary, s.name, "gradient")
            fit_curve(ax, fit, s.colour, r"fit $C_0 + C_1 N^{-1/4}$")
            boxes.append((s.label, fit_of(summary, s.name, "gradient")))
            mark_n_star(ax, n_star_of(summary, s.name), s.colour)
        fit_box(ax, boxes)
        finish(ax, AXIS_N, r"$\|\nabla_x f\|$", "Fig. 6A: input gradient of f", logy=True)

    def gap_delta(ax: Axes) -> None:
        for s in lines:
            above = s.rows[s.rows["n_over_nstar"] >= 1]
            ax.plot(
                *positive(above["delta"], above["gap"]), "o", color=s.colour, ms=5, label=s.label
            )
        finish(
            ax,
            r"$\delta \approx \|f - \bar f\| / \|\nabla f\|$",
            r"$\varepsilon - \bar\varepsilon$",
            r"gap vs boundary shift ($N \geq N^*$)",
            logy=True,
        )

    def gap_n(ax: Axes) -> None:
        boxes = []
        for s in lines:
            ax.plot(
                *positive(s.rows["n_params"], s.rows["gap"]),
                "o",
                color=s.colour,
                ms=4,
                label=s.label,
            )
            fit = fitted(summary, s.name, "gap")
            fit_curve(ax, fit, s.colour, r"fit $E_0 N^{-1/2} + E_1 N^{-3/4}$")
            boxes.append((s.label, fit_of(summary, s.name, "gap")))
            mark_n_star(ax, n_star_of(summary, s.name), s.colour)
        fit_box(ax, boxes)
        finish(ax, AXIS_N, r"$\varepsilon_N - \bar\varepsilon_N$", r"gap vs $N$", logy=True)

    return compose(
        [gradient, gap_delta, gap_n],
        panel=(5.0, 4.4),
        columns=3,
        why_empty="no gradient norms and no ensemble gap to draw",
    )


def fig7a(curves: pd.DataFrame, summary: Summary) -> Figure:
    """Fig. 7A: ||f||² against N, and against (N − N*)/N* on log axes just above N*, where
    the paper argues ||f|| ~ (N − N*)^-1: the fit ||f|| = C ((N − N*)/N*)^-β (its β with
    its uncertainty beside the paper's 1) and a slope −2 guide.

    Example::

        fig = fig7a(open_sweep("results/demo").curves(), open_sweep("results/demo").summary())
    """
    lines = series(curves)

    def against_n(ax: Axes) -> None:
        for s in lines:
            ax.plot(
                *positive(s.rows["n_params"], s.rows["f_norm"] ** 2),
                "o-",
                color=s.colour,
                ms=4,
                label=s.label,
            )
            mark_n_star(ax, n_star_of(summary, s.name), s.colour, rf"$N^*$ ({s.label})")
        finish(ax, AXIS_N, r"$\|f\|^2$", "Fig. 7A: norm of the output", logy=True)

    def past_n_star(ax: Axes) -> None:
        boxes = []
        for s in lines:
            n_star = n_star_of(summary, s.name)
            if n_star is None:
                continue
            x, y = positive(
                distance_to(n_star, s.rows["n_params"].to_numpy(float)), s.rows["f_norm"] ** 2
            )
            ax.plot(x, y, "o", color=s.colour, ms=4, label=s.label)
            fit = fitted(summary, s.name, "divergence")
            fit_curve(
                ax,
                fit,
                s.colour,
                r"fit $C^2 x^{-2\beta}$",
                transform=np.square,
                n_star=n_star,
                x_of=functools.partial(distance_to, n_star),
            )
            boxes.append((s.label, fit_of(summary, s.name, "divergence")))
            if len(x):
                guide(ax, x, y[0] * (x / x[0]) ** -2.0, r"$x^{-2}$ (paper: $\beta = 1$)")
        fit_box(ax, boxes)
        finish(ax, r"$x = (N - N^*)/N^*$", r"$\|f\|^2$", r"divergence just above $N^*$", logy=True)

    return compose(
        [against_n, past_n_star], panel=(5.6, 4.4), columns=2, why_empty="no output norms to draw"
    )


def distance_to(n_star: float, n: np.ndarray) -> np.ndarray:
    """x = (N - N*) / N*."""
    return (n - n_star) / n_star


def fig7b(snapshots: pd.DataFrame, summary: Summary) -> Figure:
    """Fig. 7B: ||f||² on the test set against N at several training times t (the grid's
    `training.snapshot_steps`), one line per t; a run that had stopped by t counts with its
    final outputs.

    Example::

        sweep = open_sweep("results/demo")
        fig = fig7b(sweep.snapshots(), sweep.summary())
    """
    steps = sorted(int(t) for t in snapshots["step"].unique()) if len(snapshots) else []
    later = [t for t in steps if t > 0]
    if not later:
        raise NothingToDraw(
            "no snapshots after step 0: set training.snapshot_steps in the grid to draw Fig. 7B"
        )
    norm = LogNorm(min(later), max(max(later), min(later) + 1))
    cmap = colormaps["plasma"]
    many = len(later) > 4  # a colour bar for t; a legend entry per t when there are few

    def at_times(ax: Axes) -> None:
        for t in steps:
            style = {"color": "k", "ls": "--"} if t == 0 else {"color": cmap(norm(t) * 0.85)}
            label = "initialisation (t = 0)" if t == 0 else None if many else f"t = {t}"
            for i, (_, g) in enumerate(series_of(snapshots[snapshots["step"] == t])):
                g = g.sort_values("n_params")
                ax.plot(
                    *positive(g["n_params"], g["f_norm2"]),
                    marker="o",
                    ms=3,
                    lw=1,
                    label=label if i == 0 else None,
                    **style,
                )
        for name, n_star in summary.n_star.items():
            mark_n_star(ax, float(n_star) if n_star is not None else None, "k", rf"$N^*$ ({name})")
        finish(ax, AXIS_N, r"$\|f_t\|^2$", r"Fig. 7B: $\|f\|^2$ at training times $t$", logy=True)

    fig = compose([at_times], panel=(6.6, 4.6), columns=1, why_empty="no snapshot norms")
    if many:
        colour_bar(fig, norm, cmap, "training step $t$")
    return fig
