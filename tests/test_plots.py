"""Figures and the HTML report, for small sweeps written directly as Parquet (no Ray): every
figure drawn, with data in every panel, legend entries with points, math set as math, and
labelled ticks on every log axis; the formats, the comparison of sweeps, the report."""

from __future__ import annotations

import base64
import io as bytes_io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.container import Container
from matplotlib.figure import Figure
from matplotlib.text import Text
from sweepfiles import write_sweep
from typer.testing import CliRunner

from orchestrator import sweep as api
from orchestrator.cli.app import app
from orchestrator.results.figures import (
    NothingToDraw,
    fig5,
    fig7a,
    fig9,
    fig10,
    grid_labels,
    to_bytes,
)
from orchestrator.results.figures.style import DPI, has_data, log_ticks
from orchestrator.results.plots import FIGURES, LINE_FIGURES, NEED_NETS, render_figures
from orchestrator.results.reduced import read_reduced
from orchestrator.results.report import TABLE, report_html
from tests.conftest import ROOT

ONE_OUTPUT = set(FIGURES) - {"fig8_cnn"}
WIDTHS = [2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A one-output (FC) and a ten-output (CNN) sweep, reduced without figures; the FC
    sweep's N* width converges late in its budget, so it carries a budget warning."""
    root = str(tmp_path_factory.mktemp("results"))
    write_sweep(root, sweep="fc", widths=WIDTHS, seeds=4,
                steps=lambda k, seed, conv: 950 if k == 5 else 100 + 10 * k + seed)  # fmt: skip
    write_sweep(root, sweep="cnn", widths=[2, 4, 8, 16, 32, 64, 128], seeds=3, n_outputs=10)
    for sweep in ("fc", "cnn"):
        api.reduce(sweep, results=root, figures=False)
    return root


@pytest.fixture(scope="module")
def fc(root):
    return read_reduced("fc", root)[1]


@pytest.fixture(scope="module")
def drawn_fc(fc):
    return render_figures(fc)


# -- what a figure must hold ------------------------------------------------------------------


def data_axes(fig: Figure) -> list[Axes]:
    return [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]


def outside_math(text: str) -> str:
    return re.sub(r"\$[^$]*\$", "", text)


def pixels(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(bytes_io.BytesIO(png), format="png")


def assert_paper_ready(fig: Figure, names: tuple[str, ...] = ()) -> None:
    """Ink on the page; data in every panel; every legend entry names something drawn with
    points; no literal _ or ^ outside math (but in `names`: grid fields, which are names);
    every log axis with two labelled ticks in view."""
    png = to_bytes(fig)  # draws it: tick labels are set
    ink = pixels(png)
    assert ink.shape[0] > 200 and ink.shape[1] > 300
    assert (ink[..., :3] < 0.5).mean() > 0.005
    for ax in data_axes(fig):
        assert has_data(ax), ax.get_title()
        assert ax.get_position().width > 0.15, ax.get_title()  # no box squeezed the panel
        legend = ax.get_legend()
        if legend is not None:
            artists = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=False))
            for text in legend.get_texts():
                artist = artists[text.get_text()]
                artist = artist[0] if isinstance(artist, Container) else artist
                if hasattr(artist, "get_xydata"):
                    assert np.isfinite(artist.get_xydata()).all(axis=1).any(), text.get_text()
    for text in fig.findobj(Text):
        words = outside_math(text.get_text())
        for name in names:
            words = words.replace(name, "")
        assert "_" not in words and "^" not in words, text.get_text()
    for ax in fig.axes:  # colour bars too
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() != "log":
                continue
            lo, hi = sorted(axis.get_view_interval())
            ticks = [t for t in axis.get_majorticklocs() if lo * 0.999 <= t <= hi * 1.001]
            labels = axis.major.formatter.format_ticks(ticks)
            assert len(ticks) >= 2 and all(labels), (ax.get_title(), axis.axis_name, lo, hi)


# -- the figures --------------------------------------------------------------------------


def test_every_figure_of_a_one_output_sweep_is_paper_ready(drawn_fc):
    assert set(drawn_fc.figures) == ONE_OUTPUT
    # Fig. 9 and 10 need the nets, N*(P) a train_size axis
    assert set(drawn_fc.missing) == set(NEED_NETS) | set(LINE_FIGURES)
    for fig in drawn_fc.figures.values():
        assert_paper_ready(fig)


def test_a_several_output_sweep_gets_fig8_paper_ready(root):
    rendered = render_figures(read_reduced("cnn", root)[1])
    assert set(rendered.figures) == set(FIGURES)
    assert_paper_ready(rendered.figures["fig8_cnn"])


def test_log_axes_get_two_labelled_ticks_whatever_their_span():
    for lo, hi in [(3.9, 4.4), (0.09, 0.2), (1.0, 4.0), (10.0, 1e6), (0.0101, 0.0102)]:
        fig = Figure()
        ax = fig.subplots()
        ax.plot([lo, hi], [lo, hi])
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        log_ticks(ax.xaxis, lo, hi)
        to_bytes(fig)
        ticks = [t for t in ax.xaxis.get_majorticklocs() if lo <= t <= hi]
        labels = ax.xaxis.major.formatter.format_ticks(ticks)
        assert len(ticks) >= 2 and all(labels), (lo, hi, ticks)


def test_figures_differ_when_the_data_differ(fc):
    before = pixels(to_bytes(fig5(fc.curves, fc.summary)))
    after = pixels(to_bytes(fig5(fc.curves.assign(f_var_all=fc.curves["f_var_all"] * 10),
                                 fc.summary)))  # fmt: skip
    assert before.shape == after.shape and not np.array_equal(before, after)


def test_fig5_shows_the_variance_at_every_width_and_which_seeds_converged(fc):
    fig = fig5(fc.curves, fc.summary)
    [ax] = data_axes(fig)
    points = {}
    for line in ax.get_lines():
        if line.get_linestyle() == "None":  # the markers: filled, or open (white inside)
            kind = "open" if line.get_markerfacecolor() == "white" else "filled"
            points |= {float(x): (kind, y) for x, y in line.get_xydata()}
    c = fc.curves
    assert sorted(points) == sorted(c["n_params"].astype(float))  # every width, below N* too
    for row in c.itertuples():
        kind, y = points[float(row.n_params)]
        assert y == pytest.approx(row.f_var_all)
        assert kind == ("filled" if row.n_converged == row.n_runs else "open")
    notes = {t.get_text() for t in ax.texts}
    partial = c[c["n_converged"] < c["n_runs"]]
    assert {f"{r.n_converged}/{r.n_seeds}" for r in partial.itertuples()} <= notes


def test_fig7a_draws_the_norm_against_the_distance_to_n_star_with_the_fit(fc):
    n_star = fc.summary.n_star["fc5"]
    fig = fig7a(fc.curves, fc.summary)
    left, right = data_axes(fig)
    assert right.get_xscale() == right.get_yscale() == "log"
    above = fc.curves[fc.curves["n_params"] > n_star]
    [points] = [ln for ln in right.get_lines() if ln.get_linestyle() == "None"]
    assert np.allclose(points.get_xdata(), (above["n_params"] - n_star) / n_star)
    assert np.allclose(points.get_ydata(), above["f_norm"] ** 2)
    legend = [t.get_text() for t in right.get_legend().get_texts()]
    assert any("paper" in t for t in legend)


def test_fig4_is_log_log_with_the_papers_guides_and_the_finite_m_distance(drawn_fc, fc):
    fig = drawn_fc.figures["fig4_ensemble"]
    error, delta = data_axes(fig)
    for ax in (error, delta):
        assert ax.get_xscale() == ax.get_yscale() == "log"
    guides = {t.get_text() for ax in (error, delta) for t in ax.get_legend().get_texts()}
    assert {"$1/n$ (paper)", "$n^{-1/2}$"} <= guides
    drawn = np.concatenate([ln.get_ydata() for ln in delta.get_lines() if ln.get_marker() == "o"])
    shown = fc.ensemble.loc[fc.ensemble["n_members"] >= 2, "delta_inf"].dropna()
    assert np.allclose(np.sort(drawn), np.sort(shown))


def test_fits_print_their_quality_and_flags_in_the_figures(drawn_fc, fc):
    words = " ".join(t.get_text() for t in drawn_fc.figures["fig2_test_error"].findobj(Text))
    fit = fc.summary.fits["fc5"]["error"]
    assert fit.ok and f"dof {fit.dof}" in words
    for flag in fit.flags:
        assert flag.split(":")[0] in words
    words = " ".join(t.get_text() for t in drawn_fc.figures["fig4_ensemble"].findobj(Text))
    assert "paper: $b$ = 1" in words and "paper: $g$ = 0.5" in words


def test_importing_the_figures_chooses_no_matplotlib_backend():
    code = (
        "import sys, matplotlib\n"
        "import orchestrator.results.figures, orchestrator.results.plots\n"
        "import orchestrator.results.report, orchestrator.cli.app\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "False"]


def test_the_readmes_notebook_example_draws_fig2(root, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    code = readme[readme.index("```python\nfrom orchestrator.results import open_sweep") + 10 :]
    code = code[: code.index("```")].replace('"results/demo"', repr(f"{root}/fc"))
    monkeypatch.chdir(tmp_path)  # it writes fig2.pdf where it runs
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "fig2.pdf").read_bytes().startswith(b"%PDF")


def test_the_figures_seam_for_the_trained_nets_draws_given_tables():
    t = np.linspace(-1, 1, 21)
    profile = pd.DataFrame({"seed": np.repeat([0, 1], 21), "t": np.tile(t, 2),
                            "f": np.concatenate([t - 0.1, t + 0.2])})  # fmt: skip
    assert_paper_ready(fig9(profile))
    distances = pd.DataFrame({"n_params": [10, 20, 40], "delta": [0.3, 0.2, 0.1],
                              "distance": [0.28, 0.21, 0.09]})  # fmt: skip
    assert_paper_ready(fig10(distances))
    with pytest.raises(NothingToDraw):
        fig9(profile.iloc[0:0])


# -- plot and its formats ---------------------------------------------------------------


def test_plot_writes_the_format_and_dpi_asked(root, drawn_fc):
    runner = CliRunner()
    for fmt, dpi in (("png", 40), ("svg", 110)):
        result = runner.invoke(app, ["plot", "cnn", "--results", root, "--format", fmt,
                                     "--dpi", str(dpi)])  # fmt: skip
        assert result.exit_code == 0, result.output
        paths = [p for p in result.stdout.split() if p.startswith(root)]
        assert {p.rsplit("/", 1)[1] for p in paths} == {f"{n}.{fmt}" for n in FIGURES}
        for path in paths:
            data = Path(path).read_bytes()
            if fmt == "svg":
                assert b"<svg" in data[:400]
            else:  # constrained layout keeps the figure's size: pixels = inches x dpi
                inches = drawn_fc.figures.get(Path(path).stem)
                height, width = pixels(data).shape[:2]
                if inches is not None and Path(path).stem != "fig8_cnn":
                    w_in, h_in = inches.get_size_inches()
                    assert (width, height) == (round(w_in * 40), round(h_in * 40))
    assert "not drawn: fig9_boundary_profile: needs the trained nets" in result.output
    assert to_bytes(drawn_fc.figures["fig2_test_error"], "pdf").startswith(b"%PDF")
    bad = runner.invoke(app, ["plot", "cnn", "--results", root, "--format", "jpg"])
    assert bad.exit_code != 0 and "jpg" in bad.output
    assert api.FIGURE_DPI == DPI


def test_plot_before_reduce_says_to_reduce(tmp_path):
    write_sweep(str(tmp_path), seeds=2, widths=[2, 3])
    result = CliRunner().invoke(app, ["plot", "synth", "--results", str(tmp_path)])
    assert result.exit_code == 1 and "jamsweep reduce synth" in result.output


def test_a_sweep_where_no_seed_converged_draws_what_it_has_and_says_what_not(tmp_path):
    """No N*, no ensemble: the figures of ensembles are not drawn (rather than drawn empty,
    as before), and plot says why; the others are drawn and paper-ready."""
    write_sweep(str(tmp_path), seeds=1, widths=[2, 3, 4], converged=lambda k, seed: False)
    api.reduce("synth", results=str(tmp_path), figures=False)
    rendered = render_figures(read_reduced("synth", str(tmp_path))[1])
    assert "fig4_ensemble" in rendered.missing and "fig2_test_error" in rendered.figures
    assert "no width has two or more ensemble members" in rendered.missing["fig4_ensemble"]
    for fig in rendered.figures.values():
        assert_paper_ready(fig)
    result = CliRunner().invoke(app, ["plot", "synth", "--results", str(tmp_path)])
    assert result.exit_code == 0 and "not drawn: fig4_ensemble: no width" in result.output


# -- several sweeps on one figure -------------------------------------------------------------


def test_grid_labels_name_what_the_grids_change():
    def grid(name, lr, depth):
        return (
            f"sweep: {name}\ntraining: {{lr_max: {lr}, max_steps: 10}}\n"
            f"architectures: [{{name: fc, depth: {depth}}}]\n"
        )

    a, b, c = grid("a", 0.0001, 3), grid("b", 0.0003, 3), grid("c", 0.0003, 5)
    assert grid_labels({"a": a, "b": b}) == {"a": "lr_max=1e-4", "b": "lr_max=3e-4"}
    both = {"a": "depth=3, lr_max=1e-4", "c": "depth=5, lr_max=3e-4"}
    assert grid_labels({"a": a, "c": c}) == both
    assert grid_labels({"a": a, "a2": a.replace("sweep: a", "sweep: a2")}) == {"a": "a", "a2": "a2"}


def test_plot_of_two_sweeps_overlays_them_labelled_by_their_grids(tmp_path):
    root = str(tmp_path)
    for name, lr in (("lr1", "0.0001"), ("lr3", "0.0003")):
        write_sweep(root, sweep=name, widths=[2, 4, 8, 16], seeds=2, training=f", lr_max: {lr}")
        api.reduce(name, results=root, figures=False)
    result = CliRunner().invoke(app, ["plot", f"{root}/lr1", f"{root}/lr3"])
    assert result.exit_code == 0, result.output
    [path] = result.stdout.split()
    assert path == f"{root}/lr1/figures/compare_lr1_lr3.png"
    assert (pixels(Path(path).read_bytes())[..., :3] < 0.5).mean() > 0.005
    from orchestrator.results.figures import fig_compare

    a, b = (read_reduced(n, root)[1] for n in ("lr1", "lr3"))
    fig = fig_compare([("lr_max=1e-4", a.curves, a.summary), ("lr_max=3e-4", b.curves, b.summary)])
    assert_paper_ready(fig, names=("lr_max",))
    labels = {
        t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
    }
    assert {"lr_max=1e-4: one net", "lr_max=3e-4: ensemble"} <= labels
    elsewhere = tmp_path / "both.svg"
    again = CliRunner().invoke(app, ["plot", "lr1", "lr3", "--results", root, "--format", "svg",
                                     "--output", str(elsewhere)])  # fmt: skip
    assert again.exit_code == 0 and again.stdout.split() == [str(elsewhere)]
    assert b"<svg" in elsewhere.read_bytes()[:300]
    one = CliRunner().invoke(app, ["plot", "lr1", "--results", root, "--output", str(elsewhere)])
    assert one.exit_code == 1 and "several sweeps" in one.output


# -- the report -------------------------------------------------------------------------------


def test_the_report_shows_every_figure_every_fit_with_its_quality_and_the_warnings(root, fc):
    path = api.report("fc", results=root)
    page = Path(path).read_text()
    assert page.startswith("<!doctype html>") and 'src="http' not in page
    images = re.findall(r'<h3>([a-z0-9_]+)</h3><img alt="[^"]+" src="data:image/png;base64,'
                        r'([A-Za-z0-9+/=]{1000,})"', page)  # fmt: skip
    assert {name for name, _ in images} == ONE_OUTPUT
    for fits in fc.summary.fits.values():
        for name, fit in fits.items():
            assert f"<td class=text>{name}</td>" in page
            if fit.ok:
                assert f"dof {fit.dof}" in page
            for flag in fit.flags:
                assert flag.replace("'", "&#x27;") in page
    assert "fig9_boundary_profile: needs the trained nets" in page
    assert "N* may be the step budget&#x27;s" in page  # the late-converging N* width
    n_star = fc.summary.n_star["fc5"]
    assert f"<td>{n_star}</td>" in page


def test_the_reports_curve_table_fits_the_page_with_k_of_n_and_one_missing_mark(fc):
    png = b"\x89PNG-bytes"
    page = report_html(fc, {"fig2_test_error": png}, {})
    assert f"base64,{base64.b64encode(png).decode()}" in page
    table = page[page.index("<h2>Curves") :]
    assert len(TABLE) <= 13 and table.count("<th>") == len(TABLE)
    for row in fc.curves.itertuples():
        assert f"<td>{row.n_converged}/{row.n_runs}</td>" in table
    assert "<td>—</td>" in table and "<td>nan</td>" not in table  # no ensemble below N*


def test_show_prints_the_curve_table_fits_with_quality_and_warnings(root):
    result = CliRunner().invoke(app, ["show", "fc", "--results", root])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "converged" in out and "4/4" in out and "0/4" in out
    assert "fit error:" in out and "dof " in out and "! underdetermined" in out
    assert "warning: fc5: N* may be the step budget's" in out.replace("\n", " ")
    summary = json.loads(Path(root, "fc", "summary.json").read_text())
    assert f"N* = {summary['n_star']['fc5']}" in out


def test_tables_of_an_older_reduce_are_refused_with_what_to_do(tmp_path):
    import pyarrow.parquet as pq

    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 4])
    api.reduce("synth", results=str(tmp_path), figures=False)
    older = pq.read_table(files.layout.curves).drop(["f_var_all", "early_stop_error"])
    pq.write_table(older, files.layout.curves)
    result = CliRunner().invoke(app, ["plot", "synth", "--results", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "written by an older jamsweep" in result.output
    assert f"jamsweep reduce {files.layout.root}" in result.output.replace("\n", "")


def test_training_curves_draw_a_line_per_point_not_one_across_points():
    """Two points of an axis at one N (train_size 500 and 1000, the same net): two lines,
    each with its own loss, never one that alternates between them."""
    from orchestrator.results.figures.training import training_curves
    from schemas.summary import Summary
    from workers.history import TRAINING_COLUMNS

    rows = []
    for p, scale in ((500, 1.0), (1000, 100.0)):
        for step in (1, 10, 100, 1000):
            row = {c: 0.0 for c in TRAINING_COLUMNS}
            row.update(arch="fc", point=f"train_size={p}", width=4.0, n_params=100, step=step)
            row.update({c: scale / step for c in TRAINING_COLUMNS if c.endswith("_mean")})
            rows.append(row)
    fig = training_curves(
        pd.DataFrame(rows, columns=TRAINING_COLUMNS), pd.DataFrame({"max_steps": [1000]}),
        Summary(sweep="s"),
    )  # fmt: skip
    lines = [
        list(line.get_ydata()) for line in fig.axes[0].get_lines() if len(line.get_xdata()) == 4
    ]
    assert sorted(lines) == sorted([[1.0, 0.1, 0.01, 0.001], [100.0, 10.0, 1.0, 0.1]])
