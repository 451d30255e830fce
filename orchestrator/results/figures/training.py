"""Training curves: loss and N_Delta against the step, one line per width, with the last
tenth of the step budget shaded (where a late convergence makes N* the budget's)."""

from __future__ import annotations

import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from orchestrator.results.figures.style import (
    NothingToDraw,
    colour_bar,
    compose,
    finish,
    positive,
)
from schemas.summary import Summary
from workers.history import LATE_FRACTION
from workers.reduce import with_point


def training_curves(training: pd.DataFrame, curves: pd.DataFrame, summary: Summary) -> Figure:
    """The mean over a width's runs of the training loss (left) and of N_Delta, the training
    points not yet fitted (right), against the step, on log axes; one line per width,
    coloured by N (a run that stopped counts with its last values). The shaded band is the
    last tenth of max_steps; the budget warning of summary.json, if any, is the title's.

    Example::

        sweep = open_sweep("results/demo")
        fig = training_curves(sweep.training(), sweep.curves(), sweep.summary())
    """
    rows = training[training["step"] > 0]
    if rows.empty:
        raise NothingToDraw("no trace rows: the runs' traces are missing")
    widths = sorted(rows["n_params"].unique())
    norm = LogNorm(min(widths), max(max(widths), min(widths) + 1))
    cmap = colormaps["viridis"]
    budget = float(curves["max_steps"].max()) if "max_steps" in curves else None
    warned = "; ".join(summary.budget.values())

    def per_width(column: str, ylabel: str, title: str):  # noqa: ANN202
        def draw(ax: Axes) -> None:
            for _, g in with_point(rows).groupby(["arch", "point", "n_params"]):
                g = g.sort_values("step")
                ax.plot(
                    *positive(g["step"], g[column]),
                    "-",
                    lw=1.1,
                    color=cmap(norm(float(g["n_params"].iloc[0]))),
                )
            if budget:
                ax.axvspan(
                    (1 - LATE_FRACTION) * budget,
                    budget,
                    color="#f2c94c",
                    alpha=0.3,
                    lw=0,
                    label="last tenth of the step budget",
                    gid="decoration",
                )
            finish(ax, "training step", ylabel, title, logy=True)

        return draw

    fig = compose(
        [
            per_width("loss_mean", "training loss", "training loss"),
            per_width("n_unsat_mean", r"$N_\Delta$ (points not fitted)", r"$N_\Delta$"),
        ],
        panel=(5.6, 4.3),
        columns=2,
        why_empty="no positive loss or N_Delta in the traces",
    )
    colour_bar(fig, norm, cmap, r"$N$ (weights)")
    if warned:
        text = warned.replace("training.max_steps", "the step budget").replace(
            "max_steps", "budget"
        )
        fig.suptitle("⚠ " + text.replace("N*", "$N^*$"), fontsize=7, wrap=True)
    return fig
