"""The jamming line through reduce, the figures, `show`, `plot` and the report, on sweeps of
result files written directly (tests/sweepfiles.py): runs of N >= C P^A reach zero loss."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from sweepfiles import write_sweep
from test_plots import assert_paper_ready, pixels
from typer.testing import CliRunner

from orchestrator import sweep as api
from orchestrator.cli.app import app
from orchestrator.results.plots import LINE_FIGURES, render_figures
from orchestrator.results.reduced import read_reduced

C, A = 0.8, 0.9
PS = [50, 100, 200, 400, 800]
WIDTHS = list(range(2, 13))


def threshold(p: int) -> float:
    return C * p**A


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """`line`: train_size an axis, N* bracketed at every P but the smallest (below the
    sweep); `flat`: no axis; `one`: an axis, but N* at one P only."""
    root = str(tmp_path_factory.mktemp("results"))
    write_sweep(root, sweep="line", widths=WIDTHS, seeds=2, n_train=PS, n_test=200,
                jammed=lambda s: s.n_params >= threshold(s.dataset.train_size))  # fmt: skip
    write_sweep(root, sweep="flat", widths=WIDTHS[:8], seeds=2, n_test=200)
    write_sweep(root, sweep="lr", widths=WIDTHS[:6], seeds=2, n_test=200,
                training=", lr_max: [0.001, 0.01]")  # fmt: skip
    write_sweep(root, sweep="one", widths=WIDTHS[:6], seeds=2, n_train=[100, 800], n_test=200,
                jammed=lambda s: s.n_params >= threshold(s.dataset.train_size))  # fmt: skip
    for sweep in ("line", "flat", "one", "lr"):
        api.reduce(sweep, results=root)
    return root


def test_reduce_stores_the_fit_and_draws_both_figures(root):
    summary = json.loads(Path(root, "line", "summary.json").read_text())
    line = summary["jamming_line"]["fc5"]
    fit = line["fit"]
    assert fit["law"] == "N* = c P^a" and fit["n_points"] == 4 and fit["dof"] == 2
    assert abs(fit["params"]["a"] - A) <= 2 * fit["errors"]["a"]
    assert [q["train_size"] for q in line["points"]] == PS
    assert [q["used"] for q in line["points"]] == [False, True, True, True, True]
    for q in line["points"][1:]:
        assert q["n_below"] < threshold(q["train_size"]) <= q["n_star"]
        assert q["n_star"] == summary["n_star"][q["series"]]
    for name in LINE_FIGURES:
        png = Path(root, "line", "figures", f"{name}.png").read_bytes()
        assert pixels(png).shape[0] > 200  # a PNG with content


def test_the_figures_are_paper_ready_and_keep_each_ps_colour(root):
    rendered = render_figures(read_reduced("line", root)[1])
    assert set(LINE_FIGURES) <= set(rendered.figures)
    for name in LINE_FIGURES:
        assert_paper_ready(rendered.figures[name])
    (ax,) = rendered.figures["nstar_vs_p"].axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    fit = read_reduced("line", root)[1].summary.jamming_line["fc5"].fit
    assert any(f"$a$ = {fit.params['a']:.3g} ± " in t and "(4 points)" in t for t in labels)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    bound = lines["fc5: upper bound (every width jammed)"]  # P = 50: every width jammed
    assert list(bound.get_xdata()) == [50] and bound.get_marker() == "v"
    half = lines["fc5: half the runs at zero loss"]
    points = read_reduced("line", root)[1].summary.jamming_line["fc5"].points
    assert list(half.get_ydata()) == [q.n_star_half for q in points if q.n_star_half]
    assert half.get_marker() == "D" and half.get_markerfacecolor() == "none"
    bars = next(c for c in ax.containers if c.get_label().startswith("fc5: $N^*$"))
    segments = bars.lines[2][0].get_segments()  # the bars: from n_below up to N*
    assert [tuple(seg[:, 1]) for seg in segments] == [
        (q.n_below, q.n_star) for q in points if q.used
    ]
    # one colour per P, the same in Fig. 2 and in the collapse
    fig2 = rendered.figures["fig2_test_error"].axes[0]
    in_fig2 = {  # the one-net curves are error bars: a container holds the label
        int(m.group(1)): to_hex(bars.lines[0].get_color())
        for bars in fig2.containers
        if (m := re.match(r"fc5 train_size=(\d+): one net", bars.get_label()))
    }
    (panel,) = rendered.figures["collapse"].axes
    in_collapse = {
        int(m.group(1)): to_hex(line.get_color())
        for line in panel.get_lines()
        if (m := re.match(r"P = (\d+) ", line.get_label()))
    }
    assert set(in_fig2) == set(PS) and len(set(in_fig2.values())) == len(PS)
    assert in_collapse == {p: in_fig2[p] for p in PS}  # every P has an N*
    assert panel.get_xscale() == "log"


@pytest.mark.parametrize(
    ("sweep", "why"),
    [
        ("flat", "the sweep has no train_size axis"),
        ("lr", "the sweep has no train_size axis"),
        ("one", "N* is found at fewer than 2 values of P (fc5: P = 100: N*, P = 800: N* is above"),
    ],
)
def test_no_line_figure_without_an_axis_or_with_n_star_at_one_p(root, sweep, why):
    for name in LINE_FIGURES:
        assert not Path(root, sweep, "figures", f"{name}.png").exists()
    assert Path(root, sweep, "figures", "fig2_test_error.png").exists()
    result = CliRunner().invoke(app, ["plot", sweep, "--results", root])
    assert result.exit_code == 0, result.output
    text = result.output.replace("\n", " ")
    for name in LINE_FIGURES:
        assert f"not drawn: {name}: {why}" in text
    assert not any(n in result.stdout for n in LINE_FIGURES)


def test_show_and_reduce_print_the_line_with_its_points(root):
    result = CliRunner().invoke(app, ["show", "line", "--results", root])
    assert result.exit_code == 0, result.output
    out = result.output
    fit = read_reduced("line", root)[1].summary.jamming_line["fc5"].fit
    assert "fc5: jamming line N*(P)" in out
    assert f"fit jamming_line: N* = c P^a: c = {fit.params['c']:.4g} ± " in out
    assert f"a = {fit.params['a']:.4g} ± " in out and "(4 points, dof 2," in out
    assert "P in [100, 800]; paper: a = 1)" in out
    assert "P = 50: N* = 38, half the runs — (not fitted: N* is below the sweep" in out
    assert "P = 800: N* = 344 in (273, 344]" in out
    one = CliRunner().invoke(app, ["reduce", "one", "--results", root, "--no-figures"]).output
    assert "fit jamming_line: none (1 value(s) of P with a bracketed N*; need at least 2" in one
    assert "jamming line" not in CliRunner().invoke(app, ["show", "flat", "--results", root]).output


def test_the_report_has_the_line_and_its_figures(root):
    page = Path(api.report("line", results=root)).read_text()
    assert "<h2>Jamming line N*(P)</h2>" in page
    assert "P = 400: N* = 210 in (155, 210]" in page
    for name in LINE_FIGURES:
        assert f'<h3>{name}</h3><img alt="{name}" src="data:image/png;base64,' in page
    flat = Path(api.report("flat", results=root)).read_text()
    assert "Jamming line" not in flat and "<li>nstar_vs_p: the sweep has no train_size" in flat
    # the curve table names each row's point (one N at two P would read as one row twice)
    assert "<th>arch</th><th>point</th><th>h</th>" in page
    assert "<td>train_size=400</td>" in page
    assert "<th>point</th>" not in flat


def test_another_axis_gets_a_curve_per_value_in_one_colour_across_figures(root):
    """lr_max an axis: Fig. 2 has one curve per value, and Fig. 5 draws each in its colour."""
    rendered = render_figures(read_reduced("lr", root)[1])

    def colours(fig, pattern):  # noqa: ANN001, ANN202
        ax = fig.axes[0]
        drawn = [*ax.containers, *ax.get_lines()]
        found = {}
        for artist in drawn:
            if m := re.match(pattern, artist.get_label()):
                first = artist.lines[0] if hasattr(artist, "lines") else artist
                found[m.group(1)] = to_hex(first.get_color())
        return found

    in_fig2 = colours(rendered.figures["fig2_test_error"], r"fc5 lr_max=([\d.]+): one net")
    in_fig5 = colours(rendered.figures["fig5_output_variance"], r"fc5 lr_max=([\d.]+): every")
    assert set(in_fig2) == {"0.001", "0.01"} and len(set(in_fig2.values())) == 2
    assert in_fig5 == in_fig2
