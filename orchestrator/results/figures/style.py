"""What every figure shares: a matplotlib Figure without pyplot (no backend chosen, no global
state), series with stable colours, log axes that always carry labelled ticks, legends
that list only what was drawn, math set as math, a fit's quality in a box, and the bytes
of a figure in png, pdf or svg."""

from __future__ import annotations

import io as bytes_io
import math
import re
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, LogNorm, Normalize
from matplotlib.container import Container
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from orchestrator.results.formats import number
from schemas.errors import JamsweepError
from schemas.summary import Fit, Summary
from workers.reduce import series_of

FORMATS = ("png", "pdf", "svg")
DPI = 110
# colour-blind-safe, in the order series get them (Okabe-Ito, then greys)
PALETTE = [
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#F0E442",
    "#000000",
    "#777777",
    "#AAAAAA",
]
AXIS_N = r"$N$ (weights)"

# parameter names as the workers write them -> as math
PARAM_TEX = {
    "eps_inf": r"$\varepsilon_\infty$",
    "E0": "$E_0$",
    "E1": "$E_1$",
    "B0": "$B_0$",
    "B1": "$B_1$",
    "C0": "$C_0$",
    "C1": "$C_1$",
    "alpha": r"$\alpha$",
    "beta": r"$\beta$",
    "b": "$b$",
    "g": "$g$",
    "B": "$B$",
    "A": "$A$",
    "C": "$C$",
}
DECORATION = "decoration"  # gid of what is not data: N* lines, guides


@dataclass(frozen=True)
class Series:
    """One curve of a figure: the rows of one series (workers.reduce.SERIES), sorted by N,
    with its name (as summary.json keys it), legend label and colour."""

    name: str
    label: str
    colour: str
    rows: pd.DataFrame


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def series(curves: pd.DataFrame, label: Callable[[str], str] = str) -> list[Series]:
    """The series of a curves-like table in name order: the same name gets the same colour
    in every figure drawn from the table."""
    return [
        Series(name, label(name), colour(i), rows.sort_values(["n_params", "width"]))
        for i, (name, rows) in enumerate(series_of(curves))
    ]


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


class NothingToDraw(JamsweepError):
    """A figure whose data are not there (says which, and what would give them)."""


def compose(
    drawers: list[Callable[[Axes], None]],
    *,
    panel: tuple[float, float],
    columns: int,
    why_empty: str,
) -> Figure:
    """A figure of the panels that have data: each drawer draws one panel (and finishes it);
    a drawer whose panel would show no data is left out, so no panel is empty. Raises
    NothingToDraw(why_empty) when none has data."""
    scratch = Figure()
    keep = []
    for draw in drawers:
        ax = scratch.add_subplot()
        draw(ax)
        if has_data(ax):
            keep.append(draw)
        ax.remove()
    if not keep:
        raise NothingToDraw(why_empty)
    columns = min(columns, len(keep))
    rows = math.ceil(len(keep) / columns)
    fig = new_figure(panel[0] * columns, panel[1] * rows)
    for draw, ax in zip(keep, panels(fig, len(keep), columns), strict=True):
        draw(ax)
    return fig


def panels(fig: Figure, count: int, columns: int | None = None) -> list[Axes]:
    """`count` axes in a grid (one row unless `columns` says otherwise)."""
    columns = columns or count
    rows = math.ceil(count / columns)
    grid = fig.subplots(rows, columns, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for extra in axes[count:]:
        extra.remove()  # no empty panel
    return axes[:count]


def positive(x: Iterable, y: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Points that a log axis can show (finite, > 0)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    return x[keep], y[keep]


def finite(x: Iterable, y: Iterable) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def mark_n_star(ax: Axes, n_star: float | None, colour: str, label: str | None = None) -> None:
    if n_star is not None:
        ax.axvline(n_star, color=colour, ls=":", lw=1, label=label, gid=DECORATION)


def guide(ax: Axes, x: np.ndarray, y: np.ndarray, label: str) -> None:
    """A reference law drawn thin and grey (not data: it does not make a panel non-empty)."""
    ax.plot(x, y, color="#888888", lw=0.9, ls=(0, (4, 3)), label=label, gid=DECORATION)


def n_star_of(summary: Summary, name: str) -> float | None:
    value = summary.n_star.get(name)
    return float(value) if value is not None else None


def fit_of(summary: Summary, name: str, law: str) -> Fit | None:
    """The fit `law` of series `name`, made or not (None when the summary has none)."""
    return summary.fits.get(name, {}).get(law)


def fitted(summary: Summary, name: str, law: str) -> Fit | None:
    """The fit, when it was made (it has numbers to draw)."""
    fit = fit_of(summary, name, law)
    return fit if fit is not None and fit.ok else None


def tick_text(value: float, _: object = None) -> str:
    """A tick label: plain for 0.001 <= |v| < 1e5, else a power of ten as math."""
    if value == 0 or not math.isfinite(value):
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:g}"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = value / 10**exponent
    if abs(mantissa - round(mantissa)) < 1e-9 and round(mantissa) == 1:
        return f"$10^{{{exponent}}}$"
    return f"${mantissa:.3g}\\times10^{{{exponent}}}$"


def log_ticks(axis: Axis, lo: float, hi: float) -> None:
    """At least two labelled ticks on a log axis whatever its span: the decades when two or
    more are in view; else 1-2-5 steps when three or more are; else evenly spaced round
    numbers (a span under a factor of about 3)."""
    if not (0 < lo < hi and math.isfinite(hi)):
        return  # nothing positive drawn: compose leaves such a panel out
    decades = [10.0**k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    if sum(lo <= d <= hi for d in decades) >= 2:
        axis.set_major_locator(LogLocator(base=10))
        axis.set_major_formatter(FuncFormatter(tick_text))
        axis.set_minor_formatter(NullFormatter())
        return
    ticks = [s * d for d in decades for s in (1, 2, 5) if lo <= s * d <= hi]
    if len(ticks) < 3:
        ticks = [
            t
            for t in MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
            if lo <= t <= hi
        ]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(tick_text))
    axis.set_minor_formatter(NullFormatter())


def has_data(ax: Axes) -> bool:
    """Whether data was drawn (N* lines and guides do not count)."""
    drawn = [*ax.get_lines(), *ax.collections]
    return any(a.get_gid() != DECORATION and _points(a) for a in drawn)


def _points(artist) -> int:  # noqa: ANN001
    """Finite points of a line or a scatter; 1 for a patch (a band is drawn, or not)."""
    if hasattr(artist, "get_xydata"):
        xy = np.asarray(artist.get_xydata(), float).reshape(-1, 2)
    elif hasattr(artist, "get_offsets"):
        xy = np.asarray(artist.get_offsets(), float).reshape(-1, 2)
    else:
        return 1
    return int(np.isfinite(xy).all(axis=1).sum())


def finish(
    ax: Axes, xlabel: str, ylabel: str, title: str, *, logx: bool = True, logy: bool = False
) -> None:
    """Scales, labels, title, grid, and a legend of what was drawn (nothing else)."""
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    shown = [
        (h, label)
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True)
        if _points(h[0] if isinstance(h, Container) else h)
    ]
    if shown:
        ax.legend(*zip(*shown, strict=True), fontsize=7)
    ax.autoscale_view()
    if logx:
        log_ticks(ax.xaxis, *sorted(ax.get_xlim()))
    if logy:
        log_ticks(ax.yaxis, *sorted(ax.get_ylim()))


def as_math(text: str) -> str:
    """A flag or a law's sentence from workers.fits with its parameter names set as math
    and its operators as symbols."""
    names = "|".join(sorted(PARAM_TEX, key=len, reverse=True))
    text = re.sub(rf"\b({names})(?= ?[=<>])", lambda m: PARAM_TEX[m.group(1)], text)
    text = text.replace("<=", "≤").replace(">=", "≥").replace("N*", "$N^*$")
    return text.replace(" sigma ", " σ ")


def fit_curve(
    ax: Axes,
    fit: Fit | None,
    colour: str,
    label: str,
    transform: Callable[[np.ndarray], np.ndarray] = lambda y: y,
    n_star: float | None = None,
    x_of: Callable[[np.ndarray], np.ndarray] = lambda n: n,
) -> None:
    """The fitted law over the N it was fitted on (x_of maps N to the panel's x)."""
    if fit is None or fit.n_range is None:
        return
    n = np.geomspace(*fit.n_range, 100)
    x, y = positive(x_of(n), transform(fit.predict(n, n_star)))
    ax.plot(x, y, color=colour, lw=1.2, ls="--", label=label)


BOX_WIDTH = 78  # characters per line of a fit box: a long flag must not widen the figure


def wrap(text: str, indent: str = "") -> list[str]:
    """Lines of at most BOX_WIDTH characters (math, which has no spaces here, stays whole)."""
    return textwrap.wrap(text, BOX_WIDTH, initial_indent=indent, subsequent_indent=indent + "  ")


def fit_box(ax: Axes, fits: Sequence[tuple[str, Fit | None]]) -> None:
    """Each fit's values, quality, the paper's value and flags, or why it was not made, in a
    box under the panel."""
    lines = []
    for label, fit in fits:
        if fit is None:
            continue
        if not fit.ok:
            lines += wrap(f"{label}: no fit ({as_math(fit.reason or '')})")
            continue
        values = ", ".join(
            f"{PARAM_TEX.get(k, k)} = {v:.3g} ± {number(fit.errors.get(k), '.2g')}"
            for k, v in fit.params.items()
            if "(N=" not in k
        )
        quality = [f"dof {fit.dof}"] if fit.dof is not None else []
        if fit.chi2_dof is not None:
            quality.append(rf"$\chi^2/\mathrm{{dof}}$ {number(fit.chi2_dof, '.2g')}")
        if fit.r2 is not None:
            quality.append(f"$R^2$ {number(fit.r2, '.3f')}")
        lines += wrap(f"{label}: {values}; {', '.join(quality)}")
        paper = ", ".join(f"{PARAM_TEX.get(k, k)} = {v:g}" for k, v in fit.paper.items())
        if paper:
            lines.append(f"    paper: {paper}")
        for flag in fit.flags:
            lines += wrap(f"⚠ {as_math(flag)}", indent="    ")
    if not lines:
        return
    # under the panel, below its x label: constrained layout makes room, no data is covered
    ax.annotate(
        "\n".join(lines),
        xy=(0, 0),
        xycoords=("axes fraction", ax.xaxis.label),
        xytext=(0, -4),
        textcoords="offset points",
        fontsize=6.5,
        va="top",
        ha="left",
        bbox={"boxstyle": "round", "fc": "#fbfbfb", "ec": "#bbbbbb"},
    )


def colour_bar(fig: Figure, norm: Normalize, cmap: str | Colormap, label: str) -> None:
    """A colour bar for the panels of `fig`; a log scale gets labelled ticks as the axes do."""
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=fig.axes, label=label)
    if isinstance(norm, LogNorm) and norm.vmin is not None and norm.vmax is not None:
        log_ticks(bar.ax.yaxis, float(norm.vmin), float(norm.vmax))


def to_bytes(fig: Figure, fmt: str = "png", dpi: int = DPI) -> bytes:
    """The figure as a png, pdf or svg file's bytes (the Agg canvas, no pyplot)."""
    if fmt not in FORMATS:
        raise JamsweepError(f"figure format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    buffer = bytes_io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi, metadata=_metadata(fmt))
    return buffer.getvalue()


def _metadata(fmt: str) -> dict:
    """No creation date in pdf and svg, so that the same tables give the same bytes."""
    return {"CreationDate": None} if fmt == "pdf" else {"Date": None} if fmt == "svg" else {}
