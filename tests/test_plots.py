"""Figures and the HTML report, for small sweeps written directly as Parquet (no Ray)."""

from __future__ import annotations

import base64
import io as bytes_io
import re

import matplotlib.image
import numpy as np
import pytest
from sweepfiles import write_sweep
from typer.testing import CliRunner

from orchestrator import sweep as api
from orchestrator.cli.app import app
from orchestrator.results import plots
from orchestrator.results.plots import render_figures, report_html
from orchestrator.results.reduction import _reduced

FIGURES = {
    "fig2_test_error",
    "fig4_ensemble",
    "fig5_output_variance",
    "fig6_gradient_and_gap",
    "fig7a_output_norm",
}
WIDTHS = [2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    """A one-output (FC) and a ten-output (CNN) sweep, reduced without figures."""
    root = str(tmp_path_factory.mktemp("results"))
    write_sweep(root, sweep="fc", widths=WIDTHS, seeds=4)
    write_sweep(root, sweep="cnn", widths=[2, 4, 8, 16, 32, 64, 128], seeds=3, n_outputs=10)
    for sweep in ("fc", "cnn"):
        api.reduce(sweep, results=root, figures=False)
    return root


def tables(root, sweep):
    _, curves, ensemble, summary = _reduced(sweep, root)
    return curves, ensemble, summary


def drawn(png: bytes) -> np.ndarray:
    """Pixels of a PNG (height, width, channels)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(bytes_io.BytesIO(png), format="png")


def assert_not_blank(png: bytes) -> None:
    pixels = drawn(png)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert (pixels[..., :3] < 0.5).mean() > 0.005  # ink: axes, labels, points


def test_every_figure_of_a_one_output_sweep_is_drawn(reduced):
    curves, ensemble, summary = tables(reduced, "fc")
    assert summary.fits["fc5"]["gap"].reason is None  # the fit line is drawn too
    figures = render_figures(curves, ensemble, summary)
    assert set(figures) == FIGURES  # no fig8 for one output
    for png in figures.values():
        assert_not_blank(png)


def test_figures_differ_when_the_data_differ(reduced):
    curves, _, summary = tables(reduced, "fc")
    before = drawn(plots._png(plots.fig5(curves, summary)))
    after = drawn(plots._png(plots.fig5(curves.assign(f_var=curves["f_var"] * 10), summary)))
    assert before.shape == after.shape and not np.array_equal(before, after)


def test_report_is_one_page_with_figures_table_and_fits(reduced):
    curves, ensemble, summary = tables(reduced, "fc")
    png = b"\x89PNG-bytes"
    page = report_html(summary, curves, {"fig2_test_error": png})
    assert page.startswith("<!doctype html>") and 'src="http' not in page
    assert f"base64,{base64.b64encode(png).decode()}" in page
    assert page.count("<tr>") >= len(curves) + 1
    assert f"<td>{summary.n_star['fc5']}</td>" in page
    e0 = summary.fits["fc5"]["gap"].params["E0"]
    assert f"E0 = {e0:.4g} ±" in page


def test_plot_and_report_commands_write_their_files_fig8_for_multi_output(reduced):
    runner = CliRunner()
    result = runner.invoke(app, ["plot", "cnn", "--results", reduced])
    assert result.exit_code == 0, result.output
    paths = result.output.split()
    names = {p.rsplit("/", 1)[1].removesuffix(".png") for p in paths}
    assert names == FIGURES | {"fig8_cnn"}
    for path in paths:
        with open(path, "rb") as png:
            assert_not_blank(png.read())
    result = runner.invoke(app, ["report", "cnn", "--results", reduced])
    assert result.exit_code == 0, result.output
    with open(result.output.strip()) as html:
        page = html.read()
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)) == 6


def test_plot_before_reduce_says_to_reduce(tmp_path):
    write_sweep(str(tmp_path), seeds=2, widths=[2, 3])
    result = CliRunner().invoke(app, ["plot", "synth", "--results", str(tmp_path)])
    assert result.exit_code == 1 and "jamsweep reduce synth" in result.output


def test_a_sweep_where_no_seed_converged_still_gets_every_figure(tmp_path):
    """No N*, no ensemble, nothing positive to put on the log axes: figures say so."""
    write_sweep(str(tmp_path), seeds=1, widths=[2, 3, 4], converged=lambda k, seed: False)
    api.reduce("synth", results=str(tmp_path))
    figures = tmp_path / "synth" / "figures"
    assert {p.stem for p in figures.iterdir()} == FIGURES
    for png in figures.iterdir():
        assert_not_blank(png.read_bytes())
