"""The seam for the figures that need the trained nets (paper Fig. 9 and Fig. 10): f along
the gradient direction between the boundaries of two nets, and the measured distance
between boundaries against delta. They are not drawn by this version: the nets are not
kept with the results yet. A later change that keeps them (`open_sweep(path).model(run_id)`)
computes the two tables below from the nets and draws them with these functions, which
`orchestrator.results.plots` then lists beside the others."""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from orchestrator.results.figures.style import compose, finish, guide, positive

PROFILE_COLUMNS = ["seed", "t", "f"]  # f(x0 + t u) of each net along one unit direction u
DISTANCE_COLUMNS = ["n_params", "delta", "distance"]  # per width: delta, measured distance


def fig9(profile: pd.DataFrame) -> Figure:
    """Fig. 9: the output of each net, f(x0 + t u), along the direction u of the gradient at
    a test point x0 (a table with PROFILE_COLUMNS, one row per net and t): where each line
    crosses 0 is that net's decision boundary.

    Example (once the nets are kept)::

        fig = fig9(pd.DataFrame({"seed": ..., "t": ..., "f": ...}))
    """

    def draw(ax: Axes) -> None:
        for seed, g in profile.groupby("seed"):
            ax.plot(g["t"], g["f"], "-", lw=1, label=f"seed {seed}")
        ax.axhline(0.0, color="k", lw=0.8, gid="decoration")
        finish(
            ax,
            r"$t$ (along $\nabla f$)",
            r"$f(x_0 + t\,u)$",
            "Fig. 9: f across the boundaries",
            logx=False,
        )

    return compose([draw], panel=(6.0, 4.2), columns=1, why_empty="no profile rows")


def fig10(distances: pd.DataFrame) -> Figure:
    """Fig. 10: the measured distance between the boundaries of the nets and of their
    average, against delta = ||f − f̄|| / ||∇f|| (a table with DISTANCE_COLUMNS), with the
    line distance = delta.

    Example (once the nets are kept)::

        fig = fig10(pd.DataFrame({"n_params": ..., "delta": ..., "distance": ...}))
    """

    def draw(ax: Axes) -> None:
        x, y = positive(distances["delta"], distances["distance"])
        ax.plot(x, y, "o", ms=5)
        if len(x):
            guide(ax, x, x, "distance = δ")
        finish(ax, r"$\delta$", "measured boundary distance", "Fig. 10", logy=True)

    return compose([draw], panel=(5.0, 4.2), columns=1, why_empty="no distances")
