"""The average of n nets against n: the paper's Fig. 4, with the finite number M of seeds in
view (workers.ensembles, workers.ensemble_fits)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator

from orchestrator.results.figures.style import (
    NothingToDraw,
    colour_bar,
    compose,
    finish,
    fit_box,
    fit_of,
    guide,
    positive,
)
from schemas.summary import Summary
from workers.reduce import with_point

CMAP = "viridis"


def fig4(ensemble: pd.DataFrame, summary: Summary) -> Figure:
    """Fig. 4: left, the test error of the average of n nets above that of infinitely many,
    ε̄ⁿ − ε̄∞ (ε̄∞ extrapolated by the fit ε̄ⁿ − ε̄ᴹ = B_N (n^-b − M^-b)), with the fitted
    B_N n^-b and a 1/n guide (the paper's law); without that fit, the error above the
    average of the M seeds, which is 0 at n = M by construction. Right, δ∞ (the distance of
    the n-average to the infinite ensemble over ||∇f||, estimated without bias for
    independent seeds) with the fit of δ_n² = A_N (n^-2g − M^-2g) and an n^-1/2 guide. One
    line per width, coloured by N; the boxes give b and g with their quality.

    Example::

        sweep = open_sweep("results/demo")
        fig = fig4(sweep.ensemble(), sweep.summary())
    """
    rows = ensemble[ensemble["n_members"] >= 2]
    widths = sorted(rows["n_params"].unique())
    if not widths:
        raise NothingToDraw("no width has two or more ensemble members (converged seeds)")
    norm = LogNorm(min(widths), max(max(widths), min(widths) + 1))
    cmap = colormaps[CMAP]
    names = sorted(summary.fits) or [""]

    def by_width(ax: Axes, column: str) -> None:
        for _, g in with_point(rows).groupby(["arch", "point", "n_params"]):
            ax.plot(
                *positive(g["n"], g[column]),
                "o-",
                ms=3,
                lw=1,
                color=cmap(norm(float(g["n_params"].iloc[0]))),
            )

    def error(ax: Axes) -> None:
        fits = [(n, f) for n in names if (f := fit_of(summary, n, "ensemble_error"))]
        extrapolated = rows["excess_error_inf"].notna().any()
        column = "excess_error_inf" if extrapolated else "excess_error"
        by_width(ax, column)
        n = np.arange(1, int(rows["n"].max()) + 1, dtype=float)
        for _, fit in fits:
            if not fit.trusted:
                continue  # no lines from a fit not made, or that the points do not support
            first = True
            for w in widths:
                amp = fit.amplitude(int(w))
                if amp is not None and amp > 0:
                    ax.plot(
                        n,
                        amp * n ** -fit.params["b"],
                        "--",
                        lw=0.8,
                        color=cmap(norm(float(w))),
                        label=r"fit $B_N\, n^{-b}$" if first else None,
                    )
                    first = False
        x, y = positive(rows["n"], rows[column])
        if len(y):
            guide(ax, n, np.median(y[x == x.min()]) / n, r"$1/n$ (paper)")
        fit_box(ax, fits)
        ylabel = (
            r"$\bar\varepsilon^n - \bar\varepsilon^\infty$"
            if extrapolated
            else r"$\bar\varepsilon^n - \bar\varepsilon^M$ (0 at $n = M$)"
        )
        finish(
            ax,
            r"$n$ (nets averaged)",
            ylabel,
            r"Fig. 4: error of the average of $n$ nets",
            logy=True,
        )
        integer_ticks(ax)

    def delta(ax: Axes) -> None:
        fits = [(n, f) for n in names if (f := fit_of(summary, n, "ensemble_delta"))]
        by_width(ax, "delta_inf")
        n = np.arange(1, int(rows["n"].max()) + 1, dtype=float)
        for _, fit in fits:
            if not fit.ok:
                continue
            first = True
            for w in widths:
                amp = fit.amplitude(int(w))
                if amp is not None and amp > 0:
                    ax.plot(
                        n,
                        np.sqrt(amp) * n ** -fit.params["g"],
                        "--",
                        lw=0.8,
                        color=cmap(norm(float(w))),
                        label=r"fit $\sqrt{A_N}\, n^{-g}$" if first else None,
                    )
                    first = False
        x, y = positive(rows["n"], rows["delta_inf"])
        if len(y):
            guide(ax, n, np.median(y[x == x.min()]) / np.sqrt(n), r"$n^{-1/2}$")
        fit_box(ax, fits)
        finish(
            ax,
            r"$n$ (nets averaged)",
            r"$\delta_\infty \approx \|\bar f^n - \bar f^\infty\|"
            r" / \|\nabla f\|$",
            "distance to the infinite ensemble",
            logy=True,
        )
        integer_ticks(ax)

    def integer_ticks(ax: Axes) -> None:
        """n is a count: label 1, 2, ... M on the log axis when there are few."""
        top = int(rows["n"].max())
        if top <= 12:
            ax.xaxis.set_major_locator(FixedLocator(range(1, top + 1)))

    fig = compose(
        [error, delta],
        panel=(5.6, 4.4),
        columns=2,
        why_empty="no ensemble of two or more seeds to draw",
    )
    colour_bar(fig, norm, cmap, r"$N$ (weights)")
    return fig
