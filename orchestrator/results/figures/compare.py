"""Several sweeps on one figure: "what did the new learning rate do". Each sweep gets one
colour, labelled by its name or by what its grid changes (`grid_labels`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from orchestrator.results.figures.style import (
    AXIS_N,
    colour,
    compose,
    finish,
    finite,
    mark_n_star,
    positive,
)
from schemas.summary import Summary
from workers.reduce import series_of

MARKERS = "osD^vP*X"
IGNORED = {"sweep", "results"}  # keys that name a sweep, not what it does


def grid_labels(grids: dict[str, str]) -> dict[str, str]:
    """A legend label per sweep (name -> its grid.yaml text): the grid fields whose values
    differ between the sweeps ("lr_max=1e-4, max_steps=8000"), named by their last part
    when that is unambiguous; the sweep's name when no field differs."""
    flat = {name: _flatten(yaml.safe_load(text) or {}) for name, text in grids.items()}
    keys = sorted({k for f in flat.values() for k in f} - IGNORED)
    differ = [k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1]
    if not differ:
        return {name: name for name in grids}
    tails = [k.rsplit(".", 1)[-1] for k in differ]
    short = {k: t if tails.count(t) == 1 else k for k, t in zip(differ, tails, strict=True)}
    return {
        name: ", ".join(f"{short[k]}={_short(f.get(k))}" for k in differ)
        for name, f in flat.items()
    }


def _flatten(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for k, v in tree.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) and "name" in v for v in tree):
        return _flatten({str(v["name"]): v for v in tree}, prefix)  # architectures by name
    return {prefix.rstrip("."): tree}


def _short(value: object) -> str:
    """1e-4 for 0.0001, 3e-4 for 0.0003, 2.5e-5; other values as they read."""
    if isinstance(value, float) and value != 0 and not 1e-2 <= abs(value) < 1e4:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return "unset" if value is None else str(value)


def fig_compare(sweeps: Sequence[tuple[str, pd.DataFrame, Summary]]) -> Figure:
    """The curves of several sweeps overlaid: test error against N (one net solid with its
    spread, ensemble dashed, N* dotted), the fraction of runs converged against N, and the
    gap against N; one colour per sweep, in the order given, with its label; one marker
    per architecture.

    Example (the same as `jamsweep plot A B`)::

        from orchestrator.results import open_sweep
        from orchestrator.results.figures import fig_compare, grid_labels
        a, b = open_sweep("results/lr1"), open_sweep("results/lr3")
        labels = grid_labels({"lr1": a.grid_text(), "lr3": b.grid_text()})
        fig = fig_compare([(labels["lr1"], a.curves(), a.summary()),
                           (labels["lr3"], b.curves(), b.summary())])
    """
    # a series per architecture and point of the sweeps' axes, named as summary.json does
    archs = sorted({a for _, c, _ in sweeps for a, _ in series_of(c)})
    marker = {a: MARKERS[i % len(MARKERS)] for i, a in enumerate(archs)}
    several = len(archs) > 1

    def lines(ax: Axes, draw) -> None:  # noqa: ANN001
        for i, (label, curves, summary) in enumerate(sweeps):
            for arch, g in series_of(curves):
                name = f"{label} ({arch})" if several else label
                draw(ax, g.sort_values("n_params"), colour(i), marker[arch], name, summary, arch)

    def error(ax: Axes) -> None:
        def one(ax, g, c, m, name, summary, arch):  # noqa: ANN001, ANN202
            keep = np.isfinite(g["test_error_mean"].to_numpy(float))
            ax.errorbar(
                g["n_params"][keep],
                g["test_error_mean"][keep],
                yerr=g["test_error_std"][keep],
                fmt=m + "-",
                color=c,
                ms=4,
                capsize=2,
                label=f"{name}: one net",
            )
            ax.plot(
                *finite(g["n_params"], g["ens_test_error"]),
                m + "--",
                color=c,
                ms=4,
                mfc="none",
                label=f"{name}: ensemble",
            )
            n_star = summary.n_star.get(arch)
            mark_n_star(ax, float(n_star) if n_star is not None else None, c)

        lines(ax, one)
        finish(ax, AXIS_N, r"test error $\varepsilon_N$", r"test error ($N^*$ dotted)")

    def converged(ax: Axes) -> None:
        def one(ax, g, c, m, name, summary, arch):  # noqa: ANN001, ANN202
            ax.plot(
                g["n_params"], g["n_converged"] / g["n_runs"], m + "-", color=c, ms=4, label=name
            )

        lines(ax, one)
        finish(ax, AXIS_N, "fraction of runs at zero loss", "convergence")

    def gap(ax: Axes) -> None:
        def one(ax, g, c, m, name, summary, arch):  # noqa: ANN001, ANN202
            ax.plot(*positive(g["n_params"], g["gap"]), m + "-", color=c, ms=4, label=name)

        lines(ax, one)
        finish(ax, AXIS_N, r"$\varepsilon_N - \bar\varepsilon_N$", r"gap vs $N$", logy=True)

    return compose(
        [error, converged, gap],
        panel=(5.2, 4.4),
        columns=3,
        why_empty="the sweeps have no finished runs to compare",
    )
