"""The jamming line, for sweeps whose `train_size` is an axis: N* against P with the fit
N* = c P^a (`nstar_vs_p`), and the test error against N/N* for every P on one panel
(`collapse`). Both raise NothingToDraw without a train_size axis or with N* at fewer than
two values of P."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from orchestrator.results.figures.style import (
    DECORATION,
    NothingToDraw,
    colour,
    compose,
    finish,
    fit_box,
    fit_curve,
    guide,
    series,
)
from orchestrator.results.formats import number
from schemas.summary import Fit, JammingLine, Summary
from workers.jamming_line import AXIS

LINE_LAW = r"$N^* = c\,P^a$"
NO_AXIS = (
    "the sweep has no train_size axis: N*(P) needs train_size as a list of values "
    "(examples/mnist_jamming_line.yaml)"
)


def _lines(curves: pd.DataFrame, summary: Summary) -> dict[str, JammingLine]:
    """The jamming lines with N* at two values of P or more; NothingToDraw (saying why)
    when there are none."""
    if AXIS not in curves.columns or not summary.jamming_line:
        raise NothingToDraw(NO_AXIS)
    drawn = {
        key: line
        for key, line in summary.jamming_line.items()
        if sum(q.n_star is not None for q in line.points) >= 2
    }
    if not drawn:
        found = "; ".join(
            f"{key}: " + ", ".join(f"P = {q.train_size}: {q.why or 'N*'}" for q in line.points)
            for key, line in summary.jamming_line.items()
        )
        raise NothingToDraw(f"N* is found at fewer than 2 values of P ({found})")
    return drawn


def fit_label(fit: Fit) -> str:
    """The legend of the fitted line: c, a with their errors, and the points used."""
    c, a = fit.params["c"], fit.params["a"]
    errors = fit.errors
    return (
        f"fit {LINE_LAW}: $c$ = {c:.3g} ± {number(errors.get('c'), '.2g')}, "
        f"$a$ = {a:.3g} ± {number(errors.get('a'), '.2g')} ({fit.n_points} points)"
    )


def nstar_vs_p(curves: pd.DataFrame, summary: Summary) -> Figure:
    """N* against P, log-log, for each architecture (and point of the other axes): N* as
    filled points with the bracket (down to the N of the width just below) as the error bar,
    the N of half the runs at zero loss as open diamonds, an N* that is only an upper bound
    (every width jammed) as an open triangle, the fit N* = c P^a through the brackets
    (c, a ± 1 sigma and the points used in the legend; its quality and flags below) and
    a grey guide N* ∝ P.

    Example::

        sweep = open_sweep("results/mnist_jamming_line")
        fig = nstar_vs_p(sweep.curves(), sweep.summary())
    """
    lines = _lines(curves, summary)

    def draw(ax: Axes) -> None:
        boxes = []
        for i, (key, line) in enumerate(lines.items()):
            c = colour(i)
            used = [q for q in line.points if q.used]
            p = np.array([q.train_size for q in used], float)
            top = np.array([q.n_star for q in used], float)
            bottom = np.array([q.n_below for q in used], float)
            ax.errorbar(
                p,
                top,
                yerr=[top - bottom, np.zeros_like(top)],
                fmt="o",
                color=c,
                ms=5,
                capsize=3,
                label=f"{key}: $N^*$ (bar: down to the width below)",
            )
            half = [(q.train_size, q.n_star_half) for q in line.points if q.n_star_half]
            if half:
                ax.plot(*zip(*half, strict=True), "D", color=c, mfc="none", ms=5,
                        label=f"{key}: half the runs at zero loss")  # fmt: skip
            bound = [(q.train_size, q.n_star) for q in line.points if q.n_star and not q.used]
            if bound:
                ax.plot(*zip(*bound, strict=True), "v", color=c, mfc="none", ms=6,
                        label=f"{key}: upper bound (every width jammed)")  # fmt: skip
            if line.fit.ok and line.fit.n_range is not None:
                fit_curve(ax, line.fit, c, fit_label(line.fit))
                p_range = np.geomspace(line.fit.n_range[0], line.fit.n_range[1], 20)
                middle = float(np.exp(np.mean(np.log(line.fit.predict(p_range)))))
                centre = float(np.exp(np.mean(np.log(p_range))))
                guide(ax, p_range, middle * p_range / centre, r"$\propto P$ ($a$ = 1)")
            boxes.append((f"{key} {LINE_LAW}", line.fit))
        fit_box(ax, boxes)
        finish(ax, r"$P$ (training samples)", r"$N^*$ (weights)", r"$N^*$ against $P$",
               logy=True)  # fmt: skip

    return compose([draw], panel=(6.4, 4.6), columns=1, why_empty=NO_AXIS)


def collapse(curves: pd.DataFrame, summary: Summary) -> Figure:
    """The test error (mean over seeds) against N/N*, log x, every P with an N* on one
    panel per architecture (and point of the other axes); each P in its colour of Fig. 2.
    Near the cusp, N/N* = 1, the curves of different P should fall on one another.

    Example::

        sweep = open_sweep("results/mnist_jamming_line")
        fig = collapse(sweep.curves(), sweep.summary())
    """
    lines = _lines(curves, summary)
    by_name = {s.name: s for s in series(curves)}  # the colours of every other figure

    def panel(key: str, line: JammingLine):  # noqa: ANN202
        def draw(ax: Axes) -> None:
            for q in line.points:
                s = by_name.get(q.series)
                if s is None or q.n_star is None:
                    continue
                g = s.rows[np.isfinite(s.rows["test_error_mean"].to_numpy(float))]
                ax.plot(g["n_params"] / q.n_star, g["test_error_mean"], "o-", color=s.colour,
                        ms=4, label=f"P = {q.train_size} ($N^*$ = {q.n_star})")  # fmt: skip
            ax.axvline(1.0, color="#888888", ls=":", lw=1, gid=DECORATION)
            finish(ax, r"$N / N^*$", r"test error $\varepsilon_N$",
                   f"{key}: test error against $N/N^*$")  # fmt: skip

        return draw

    return compose(
        [panel(key, line) for key, line in lines.items()],
        panel=(6.4, 4.2),
        columns=1,
        why_empty="no width of a P with an N* has a finished run",
    )
