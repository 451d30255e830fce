"""The figures drawn from the trained nets (paper Fig. 9 and Fig. 10): f along the gradient
direction through the boundaries of several nets, and the measured distance between
boundaries against delta. The tables come from the kept nets
(`orchestrator.results.boundaries.boundary_tables`); these functions only draw them, for
`orchestrator.results.plots` and for notebooks."""

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

    Example::

        profile, distances = boundary_tables(open_sweep("demo").layout)
        fig = fig9(profile)
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

    Example::

        profile, distances = boundary_tables(open_sweep("demo").layout)
        fig = fig10(distances)
    """

    def draw(ax: Axes) -> None:
        x, y = positive(distances["delta"], distances["distance"])
        ax.plot(x, y, "o", ms=5)
        if len(x):
            guide(ax, x, x, "distance = δ")
        finish(ax, r"$\delta$", "measured boundary distance", "Fig. 10", logy=True)

    return compose([draw], panel=(5.0, 4.2), columns=1, why_empty="no distances")
