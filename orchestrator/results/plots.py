"""Which figures a reduced sweep gets, and where they are written: `render_figures` (tables
in, Figures out, and why any is missing), `write_figures`, and the `plot` and `compare`
of the API. The figures themselves are in orchestrator.results.figures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from matplotlib.figure import Figure

from orchestrator.results.boundaries import NO_NETS, NoBoundaries, boundary_tables
from orchestrator.results.figures import (
    FORMATS,
    NothingToDraw,
    collapse,
    fig2,
    fig4,
    fig5,
    fig6,
    fig7a,
    fig7b,
    fig8,
    fig9,
    fig10,
    fig_compare,
    grid_labels,
    nstar_vs_p,
    to_bytes,
    training_curves,
)
from orchestrator.results.figures.style import DPI
from orchestrator.results.reduced import Reduced, read_reduced
from schemas.errors import JamsweepError
from schemas.layout import RESULTS_DEFAULT, SweepLayout
from workers import io

# name -> how it is drawn from the reduced tables (file names: figures/NAME.FORMAT)
FIGURES: dict[str, Callable[[Reduced], Figure]] = {
    "fig2_test_error": lambda r: fig2(r.curves, r.summary),
    "fig4_ensemble": lambda r: fig4(r.ensemble, r.summary),
    "fig5_output_variance": lambda r: fig5(r.curves, r.summary),
    "fig6_gradient_and_gap": lambda r: fig6(r.curves, r.summary),
    "fig7a_output_norm": lambda r: fig7a(r.curves, r.summary),
    "fig7b_output_norm_in_time": lambda r: fig7b(r.snapshots, r.summary),
    "training_curves": lambda r: training_curves(r.training, r.curves, r.summary),
    "fig8_cnn": lambda r: fig8(r.curves, r.summary),
}
LINE_FIGURES: dict[str, Callable[[Reduced], Figure]] = {  # when train_size is an axis
    "nstar_vs_p": lambda r: nstar_vs_p(r.curves, r.summary),
    "collapse": lambda r: collapse(r.curves, r.summary),
}
NEED_NETS = {  # the figures drawn from the kept nets (models/), and why without them
    "fig9_boundary_profile": NO_NETS,
    "fig10_boundary_distance": NO_NETS,
}


@dataclass
class Rendered:
    """The figures drawn, by name, and those that were not, with why."""

    figures: dict[str, Figure] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


def render_figures(reduced: Reduced, layout: SweepLayout | None = None) -> Rendered:
    """Every figure the tables support (fig8 only for sweeps of several outputs; the
    jamming line's with N* at two values of train_size or more); with the sweep's `layout`,
    Fig. 9 and 10 from its kept nets too."""
    done = Rendered()
    several = bool((reduced.curves["n_outputs"] > 1).any()) if len(reduced.curves) else False
    for name, draw in (FIGURES | LINE_FIGURES).items():
        if name == "fig8_cnn" and not several:
            continue
        try:
            done.figures[name] = draw(reduced)
        except NothingToDraw as why:
            done.missing[name] = str(why)
    if layout is None:
        done.missing |= NEED_NETS
    else:
        _draw_boundaries(done, layout)
    return done


def _draw_boundaries(done: Rendered, layout: SweepLayout) -> None:
    """Fig. 9 and Fig. 10 from the kept nets, or why not, into `done`."""
    try:
        profile, distances = boundary_tables(layout)
        done.figures["fig9_boundary_profile"] = fig9(profile)
        done.figures["fig10_boundary_distance"] = fig10(distances)
    except (NoBoundaries, NothingToDraw, JamsweepError, OSError) as why:
        # the nets, their code or the data are not reachable here: the other figures stand
        for name in NEED_NETS:
            done.figures.pop(name, None)
            done.missing[name] = str(why)


def write_figures(
    layout: SweepLayout, reduced: Reduced, *, fmt: str = "png", dpi: int = DPI
) -> Rendered:
    """Render and store every figure as figures/NAME.FMT (each file written atomically)."""
    rendered = render_figures(reduced, layout)
    for name, fig in rendered.figures.items():
        io.write_bytes(layout.figure(name, fmt), to_bytes(fig, fmt, dpi))
    return rendered


@dataclass
class Plotted:
    """What `plot` and `compare` wrote, and the figures they could not draw, with why."""

    paths: list[str]
    missing: dict[str, str] = field(default_factory=dict)


def plot(
    sweep: str, *, results: str = RESULTS_DEFAULT, fmt: str = "png", dpi: int = DPI
) -> Plotted:
    """Draw the paper's figures from the reduced tables into SWEEP/figures/."""
    _check(fmt, dpi)
    layout, reduced = read_reduced(sweep, results)
    if not (reduced.curves["n_seeds"] > 0).any():
        raise JamsweepError(f"sweep {sweep!r} has no finished runs to plot yet")
    rendered = write_figures(layout, reduced, fmt=fmt, dpi=dpi)
    return Plotted([layout.figure(n, fmt) for n in rendered.figures], rendered.missing)


def compare(
    sweeps: Sequence[tuple[str, str]],
    *,
    output: str | None = None,
    fmt: str = "png",
    dpi: int = DPI,
) -> Plotted:
    """Overlay the curves of several reduced sweeps, each given as (results, sweep), on one
    figure, labelled by what their grids change (or by their names); written to `output`,
    by default the first sweep's figures/compare_A_B....FMT."""
    _check(fmt, dpi)
    if len(sweeps) < 2:
        raise JamsweepError("compare needs two sweeps or more")
    loaded = [read_reduced(name, results) for results, name in sweeps]
    keys = [layout.root for layout, _ in loaded]
    if len(set(keys)) < len(keys):
        raise JamsweepError(f"a sweep is named twice: {', '.join(keys)}")
    texts = {layout.root: io.read_text(layout.grid_yaml) for layout, _ in loaded}
    labels = grid_labels(texts)
    if len(set(labels.values())) < len(labels):  # same grids: the names tell them apart
        labels = {layout.root: layout.sweep for layout, _ in loaded}
    if len(set(labels.values())) < len(labels):
        labels = {layout.root: layout.root for layout, _ in loaded}
    fig = fig_compare([(labels[layout.root], r.curves, r.summary) for layout, r in loaded])
    first = loaded[0][0]
    target = output or first.comparison([layout.sweep for layout, _ in loaded[1:]], fmt)
    io.write_bytes(target, to_bytes(fig, fmt, dpi))
    return Plotted([target])


def _check(fmt: str, dpi: int) -> None:
    if fmt not in FORMATS:
        raise JamsweepError(f"the format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if not 20 <= dpi <= 1200:
        raise JamsweepError(f"the dpi must be between 20 and 1200, not {dpi}")


__all__ = ["FIGURES", "LINE_FIGURES", "Plotted", "Rendered", "compare", "plot", "render_figures"]
