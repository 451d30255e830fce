"""The test error against N: the paper's Fig. 2 (one output) and Fig. 8 (several outputs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from orchestrator.results.figures.style import (
    AXIS_N,
    compose,
    finish,
    finite,
    fit_box,
    fit_curve,
    fit_of,
    fitted,
    mark_n_star,
    n_star_of,
    positive,
    series,
)
from schemas.summary import Summary

ERROR_LAW = r"$\varepsilon_\infty + B_0 N^{-1/2} + B_1 N^{-3/4}$"
GAP_LAW = r"$E_0 N^{-1/2} + E_1 N^{-3/4}$"


def fig2(curves: pd.DataFrame, summary: Summary) -> Figure:
    """Fig. 2: the test error against N, one net (mean ± std over its finished seeds), the
    ensemble average f̄ (where there are members), early stopping (the mean of each run's
    best test error along training, where the traces have test errors) and the fit
    ε∞ + B0 N^-1/2 + B1 N^-3/4 with its quality; below, the training error.

    Example (in a notebook; no matplotlib backend is chosen, the Figure shows itself)::

        from orchestrator.results import open_sweep
        from orchestrator.results.figures import fig2
        sweep = open_sweep("results/demo")
        fig = fig2(sweep.curves(), sweep.summary())
        fig.savefig("fig2.pdf")
    """
    lines = series(curves)

    def test_error(ax: Axes) -> None:
        boxes = []
        for s in lines:
            g, c = s.rows, s.colour
            shown = np.isfinite(g["test_error_mean"].to_numpy(float))
            ax.errorbar(
                g["n_params"][shown],
                g["test_error_mean"][shown],
                yerr=g["test_error_std"][shown],
                fmt="o-",
                color=c,
                ms=4,
                capsize=2,
                label=f"{s.label}: one net (mean ± std)",
            )
            ax.plot(
                *finite(g["n_params"], g["ens_test_error"]),
                "s--",
                color=c,
                ms=4,
                mfc="none",
                label=rf"{s.label}: ensemble $\bar f$",
            )
            ax.plot(
                *finite(g["n_params"], g["early_stop_error"]),
                "^:",
                color=c,
                ms=4,
                label=f"{s.label}: early stopping (best along training)",
            )
            fit = fitted(summary, s.name, "error")
            fit_curve(ax, fit, "k", f"fit {ERROR_LAW}")
            boxes.append((f"{s.label} error", fit_of(summary, s.name, "error")))
            mark_n_star(ax, n_star_of(summary, s.name), c, rf"$N^*$ ({s.label})")
        fit_box(ax, boxes)
        finish(ax, AXIS_N, r"test error $\varepsilon_N$", r"Fig. 2: test error vs $N$")

    def train_error(ax: Axes) -> None:
        for s in lines:
            ax.plot(
                *finite(s.rows["n_params"], s.rows["train_error_mean"]),
                "o-",
                color=s.colour,
                ms=4,
                label=s.label,
            )
            mark_n_star(ax, n_star_of(summary, s.name), s.colour)
        finish(ax, AXIS_N, "train error", r"train error (zero above $N^*$)")

    return compose(
        [test_error, train_error],
        panel=(6.4, 3.9),
        columns=1,
        why_empty="no finished run: no test error to draw",
    )


def fig8(curves: pd.DataFrame, summary: Summary) -> Figure:
    """Fig. 8, for sweeps of several outputs (CNNs): the test error (argmax) and the ensemble,
    the gap ε − ε̄ with its fit, the output variance and the training loss against N.

    Example::

        sweep = open_sweep("results/cifar")
        fig = fig8(sweep.curves(), sweep.summary())
    """
    lines = series(curves[curves["n_outputs"] > 1])

    def error(ax: Axes) -> None:
        for s in lines:
            g, c = s.rows, s.colour
            ax.plot(
                *finite(g["n_params"], g["test_error_mean"]),
                "o-",
                color=c,
                ms=4,
                label=f"{s.label}: one net",
            )
            ax.plot(
                *finite(g["n_params"], g["ens_test_error"]),
                "s--",
                color=c,
                ms=4,
                mfc="none",
                label=f"{s.label}: ensemble",
            )
            mark_n_star(ax, n_star_of(summary, s.name), c)
        finish(ax, AXIS_N, "test error (argmax)", "Fig. 8: CNN test error")

    def gap(ax: Axes) -> None:
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
            fit_curve(ax, fit, s.colour, f"fit {GAP_LAW}")
            boxes.append((f"{s.label} gap", fit_of(summary, s.name, "gap")))
            mark_n_star(ax, n_star_of(summary, s.name), s.colour)
        fit_box(ax, boxes)
        finish(ax, AXIS_N, r"$\varepsilon_N - \bar\varepsilon_N$", r"gap vs $N$", logy=True)

    def per_n(column: str, ylabel: str, title: str):  # noqa: ANN202
        def draw(ax: Axes) -> None:
            for s in lines:
                ax.plot(
                    *positive(s.rows["n_params"], s.rows[column]),
                    "o-",
                    color=s.colour,
                    ms=4,
                    label=s.label,
                )
                mark_n_star(ax, n_star_of(summary, s.name), s.colour)
            finish(ax, AXIS_N, ylabel, title, logy=True)

        return draw

    return compose(
        [
            error,
            gap,
            per_n("f_var_all", r"$\|f - \bar f\|^2$ (summed over outputs)", "output variance"),
            per_n("train_loss_mean", "train loss", "train loss"),
        ],
        panel=(5.5, 4.0),
        columns=2,
        why_empty="no finished run with several outputs",
    )
