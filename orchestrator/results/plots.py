"""The paper's figures from the reducer's tables, and the one-page HTML report.

`render_figures` is pure (tables in, PNG bytes out) so tests need no files; `write_figures`
stores them atomically through workers.io. Figures follow arXiv 1901.01608:
  fig2   test error vs N (seed mean +- std, ensemble, N*, fit) and train error vs N
  fig4   excess error of the average of n nets, eps_bar^n - eps_bar, and delta, vs n
  fig5   output variance ||f - f_bar||^2 vs N
  fig6   ||grad f|| vs N, eps - eps_bar vs delta, eps - eps_bar vs N with its N^-1/2 fit
  fig7a  ||f||^2 vs N
  fig8   for multi-output (CNN) sweeps: the same story on one page
"""

from __future__ import annotations

import base64
import html
import io as bytes_io
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from schemas.layout import SweepLayout  # noqa: E402
from schemas.summary import Fit, Summary  # noqa: E402
from workers import io  # noqa: E402

DPI = 110


# -- helpers -----------------------------------------------------------------------------


def _archs(curves: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    """(arch, its rows sorted by N, colour) for every architecture."""
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [
        (str(a), g.sort_values("n_params"), colours[i % len(colours)])
        for i, (a, g) in enumerate(curves.groupby("arch"))
    ]


def _positive(
    x: pd.Series | np.ndarray, y: pd.Series | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Points that a log axis can show (finite, > 0)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    return x[keep], y[keep]


def _fit(summary: Summary, arch: str, name: str) -> Fit | None:
    fit = summary.fits.get(arch, {}).get(name)
    return fit if fit is not None and fit.ok else None


def _n_star(summary: Summary, arch: str) -> float | None:
    value = summary.n_star.get(arch)
    return float(value) if value is not None else None


def _mark_n_star(ax: Axes, summary: Summary, arch: str, colour: str) -> None:
    n_star = _n_star(summary, arch)
    if n_star is not None:
        ax.axvline(n_star, color=colour, ls=":", lw=1, label=f"N* = {n_star:g} ({arch})")


def _fit_line(
    ax: Axes,
    fit: Fit | None,
    colour: str,
    label: str,
    transform: Callable[[np.ndarray], np.ndarray] = lambda y: y,
    n_star: float | None = None,
) -> None:
    if fit is None or fit.n_range is None:
        return
    n = np.geomspace(*fit.n_range, 100)
    x, y = _positive(n, transform(fit.predict(n, n_star)))
    ax.plot(x, y, color=colour, lw=1.2, ls="--", label=label)


def _finish(
    ax: Axes, xlabel: str, ylabel: str, title: str, *, logx: bool = True, logy: bool = False
) -> None:
    if not _has_data(ax):
        ax.text(0.5, 0.5, "nothing to show yet", ha="center", transform=ax.transAxes)
        logx = logy = False  # a log axis without positive data cannot be drawn
    if logx:
        ax.set_xscale("log")
        _plain_log_labels(ax.xaxis, ax.get_xlim())
    if logy:
        ax.set_yscale("log")
        _plain_log_labels(ax.yaxis, ax.get_ylim())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _has_data(ax: Axes) -> bool:
    """Whether anything was plotted at data coordinates (the N* lines alone do not count)."""
    y0, y1 = ax.dataLim.intervaly
    return bool(np.isfinite(y0) and np.isfinite(y1) and y0 <= y1)


def _plain_log_labels(axis, limits: tuple[float, float]) -> None:  # noqa: ANN001
    """Tick labels as plain numbers (1000, 0.02): readable, and much faster to draw than
    mathtext powers; minor ticks are labelled only when the axis spans under a decade."""
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    lo, hi = limits
    short = lo > 0 and hi / lo < 10
    axis.set_minor_formatter(plain if short else matplotlib.ticker.NullFormatter())


def _png(fig: Figure) -> bytes:
    buffer = bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


# -- the figures ---------------------------------------------------------------------------


def fig2(curves: pd.DataFrame, summary: Summary) -> Figure:
    """Test error vs N with spread, ensemble, N*, the eps_inf + B0 N^-1/2 + B1 N^-3/4 fit;
    train error vs N."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 7.2), layout="constrained", sharex=True)
    for arch, g, c in _archs(curves):
        top.errorbar(
            g["n_params"],
            g["test_error_mean"],
            yerr=g["test_error_std"],
            fmt="o-",
            color=c,
            ms=4,
            capsize=2,
            label=f"{arch}: one net (mean ± std)",
        )
        top.plot(
            g["n_params"],
            g["ens_test_error"],
            "s--",
            color=c,
            ms=4,
            mfc="none",
            label=f"{arch}: ensemble f̄",
        )
        _fit_line(top, _fit(summary, arch, "error"), "k", "ε∞ + B0 N^-1/2 + B1 N^-3/4")
        _mark_n_star(top, summary, arch, c)
        bottom.plot(g["n_params"], g["train_error_mean"], "o-", color=c, ms=4, label=arch)
        _mark_n_star(bottom, summary, arch, c)
    _finish(top, "", "test error ε", "Fig. 2: test error vs number of parameters")
    _finish(bottom, "N (weights)", "train error", "train error (zero above N*)")
    return fig


def fig4(ensemble: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """eps_bar^n - eps_bar and delta vs the number n of nets averaged, one line per N."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    if ensemble.empty:
        for ax in (left, right):
            ax.text(
                0.5, 0.5, "no ensemble (no converged seeds)", ha="center", transform=ax.transAxes
            )
        return fig
    lo, hi = ensemble["n_params"].min(), ensemble["n_params"].max()
    norm = matplotlib.colors.LogNorm(lo, max(hi, lo + 1))
    styles = dict(zip(sorted(ensemble["arch"].unique()), ["-", "--", ":", "-."] * 8, strict=False))
    for (arch, n_params), g in ensemble.groupby(["arch", "n_params"]):
        colour = plt.cm.viridis(norm(float(n_params)))  # type: ignore[arg-type]
        label = f"{arch} N={n_params}"
        left.plot(
            g["n"], g["excess_error"], marker="o", ms=3, ls=styles[arch], color=colour, label=label
        )
        x, y = _positive(g["n"], g["delta"])
        right.plot(x, y, marker="o", ms=3, ls=styles[arch], color=colour, label=label)
    _finish(
        left, "n (nets averaged)", "ε̄ⁿ − ε̄", "Fig. 4: error of the average of n nets", logx=False
    )
    left.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _finish(right, "n (nets averaged)", "δ ≈ ‖f̄ⁿ − f̄‖ / ‖∇f‖", "boundary distance vs n", logy=True)
    for ax in (left, right):
        if len(ax.get_lines()) > 8 and ax.get_legend():
            ax.get_legend().remove()
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=[left, right], label="N")
    return fig


def fig5(curves: pd.DataFrame, summary: Summary) -> Figure:
    """Output variance ||f - f_bar||^2 vs N, with the free-exponent fit."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for arch, g, c in _archs(curves):
        x, y = _positive(g["n_params"], g["f_var"])
        ax.plot(x, y, "o-", color=c, ms=4, label=arch)
        fit = _fit(summary, arch, "variance")
        if fit is not None:
            _fit_line(
                ax,
                fit,
                c,
                f"N^-2α, α = {fit.params['alpha']:.2f} ± {fit.errors['alpha']:.2f}",
                transform=np.square,
            )
        _mark_n_star(ax, summary, arch, c)
    _finish(
        ax, "N (weights)", "‖f − f̄‖²", "Fig. 5: output variance over initialisations", logy=True
    )
    return fig


def fig6(curves: pd.DataFrame, summary: Summary) -> Figure:
    """||grad f|| vs N; eps - eps_bar vs delta; eps - eps_bar vs N with the N^-1/2 fit."""
    fig, (a, b, c_ax) = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    for arch, g, c in _archs(curves):
        a.plot(*_positive(g["n_params"], g["grad_norm"]), "o-", color=c, ms=4, label=arch)
        _mark_n_star(a, summary, arch, c)
        above = g[g["n_over_nstar"] >= 1] if g["n_over_nstar"].notna().any() else g
        b.plot(*_positive(above["delta"], above["gap"]), "o", color=c, ms=5, label=arch)
        c_ax.plot(*_positive(g["n_params"], g["gap"]), "o", color=c, ms=4, label=arch)
        fit = _fit(summary, arch, "gap")
        if fit is not None:
            _fit_line(c_ax, fit, c, f"E0 N^-1/2 + E1 N^-3/4 (E0 = {fit.params['E0']:.3g})")
        _mark_n_star(c_ax, summary, arch, c)
    _finish(a, "N (weights)", "‖∇f‖", "Fig. 6: input gradient of f", logy=True)
    _finish(b, "δ ≈ ‖f − f̄‖ / ‖∇f‖", "ε − ε̄", "gap vs boundary shift (N ≥ N*)", logy=True)
    _finish(c_ax, "N (weights)", "ε_N − ε̄_N", "gap vs N", logy=True)
    return fig


def fig7a(curves: pd.DataFrame, summary: Summary) -> Figure:
    """||f||^2 vs N, and its divergence (N/N* - 1)^-2beta fit just above N*."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for arch, g, c in _archs(curves):
        ax.plot(*_positive(g["n_params"], g["f_norm"] ** 2), "o-", color=c, ms=4, label=arch)
        fit = _fit(summary, arch, "divergence")
        if fit is not None:
            _fit_line(
                ax,
                fit,
                c,
                f"(N/N* − 1)^-2β, β = {fit.params['beta']:.2f} ± {fit.errors['beta']:.2f}",
                transform=np.square,
                n_star=_n_star(summary, arch),
            )
        _mark_n_star(ax, summary, arch, c)
    _finish(ax, "N (weights)", "‖f‖²", "Fig. 7A: norm of the output", logy=True)
    return fig


def fig8(curves: pd.DataFrame, summary: Summary) -> Figure:
    """Multi-output (CNN) sweeps: test error and ensemble, gap, variance, train loss vs N."""
    multi = curves[curves["n_outputs"] > 1]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), layout="constrained", sharex=True)
    (err, gap), (var, loss) = axes
    for arch, g, c in _archs(multi):
        err.plot(g["n_params"], g["test_error_mean"], "o-", color=c, ms=4, label=f"{arch}: one net")
        err.plot(
            g["n_params"],
            g["ens_test_error"],
            "s--",
            color=c,
            ms=4,
            mfc="none",
            label=f"{arch}: ensemble",
        )
        gap.plot(*_positive(g["n_params"], g["gap"]), "o", color=c, ms=4, label=arch)
        _fit_line(gap, _fit(summary, arch, "gap"), c, "E0 N^-1/2 + E1 N^-3/4")
        var.plot(*_positive(g["n_params"], g["f_var"]), "o-", color=c, ms=4, label=arch)
        loss.plot(*_positive(g["n_params"], g["train_loss_mean"]), "o-", color=c, ms=4, label=arch)
        for ax in (err, gap, var, loss):
            _mark_n_star(ax, summary, arch, c)
    _finish(err, "N (weights)", "test error (argmax)", "Fig. 8: CNN test error")
    _finish(gap, "N (weights)", "ε_N − ε̄_N", "gap vs N", logy=True)
    _finish(var, "N (weights)", "‖f − f̄‖² (summed over outputs)", "output variance", logy=True)
    _finish(loss, "N (weights)", "train loss", "train loss", logy=True)
    return fig


def render_figures(
    curves: pd.DataFrame, ensemble: pd.DataFrame, summary: Summary
) -> dict[str, bytes]:
    """Name -> PNG bytes of every figure the sweep supports (fig8 only with multi-output)."""
    figures = {
        "fig2_test_error": lambda: fig2(curves, summary),
        "fig4_ensemble": lambda: fig4(ensemble, curves),
        "fig5_output_variance": lambda: fig5(curves, summary),
        "fig6_gradient_and_gap": lambda: fig6(curves, summary),
        "fig7a_output_norm": lambda: fig7a(curves, summary),
    }
    if "n_outputs" in curves and (curves["n_outputs"] > 1).any():
        figures["fig8_cnn"] = lambda: fig8(curves, summary)
    return {name: _png(make()) for name, make in figures.items()}


def write_figures(
    layout: SweepLayout, curves: pd.DataFrame, ensemble: pd.DataFrame, summary: Summary
) -> list[str]:
    """Render and store every figure (each file written atomically); return their paths."""
    paths = []
    for name, png in render_figures(curves, ensemble, summary).items():
        path = layout.figure(name)
        io.write_bytes(path, png)
        paths.append(path)
    return paths


# -- the HTML report ---------------------------------------------------------------------------


def _fit_rows(summary: Summary) -> str:
    rows = []
    for arch, fits in summary.fits.items():
        for name, fit in fits.items():
            if fit.ok:
                values = ", ".join(
                    f"{k} = {v:.4g} ± {fit.errors.get(k, float('nan')):.2g}"
                    for k, v in fit.params.items()
                )
                where = (
                    f"{fit.n_points} widths, N in [{fit.n_range[0]:g}, {fit.n_range[1]:g}]"
                    if fit.n_range
                    else ""
                )
            else:
                values, where = "—", fit.reason or ""
            rows.append(
                f"<tr><td>{html.escape(arch)}</td><td>{html.escape(name)}</td>"
                f"<td>{html.escape(fit.law)}</td><td>{html.escape(values)}</td>"
                f"<td>{html.escape(where)}</td></tr>"
            )
    return "\n".join(rows)


def _n_star_rows(summary: Summary) -> str:
    rows = []
    for arch, n_star in summary.n_star.items():
        half = summary.n_star_half.get(arch)
        bracket = summary.n_star_bracket.get(arch)
        rows.append(
            f"<tr><td>{html.escape(arch)}</td><td>{'—' if n_star is None else n_star}</td>"
            f"<td>{'—' if half is None else f'{half:.1f}'}</td>"
            f"<td>{'—' if not bracket else f'h ∈ ({bracket[0]:g}, {bracket[1]:g}]'}</td></tr>"
        )
    return "\n".join(rows)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;
padding:3px 7px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
img{max-width:100%;display:block;margin:1em 0}"""


def report_html(summary: Summary, curves: pd.DataFrame, figures: dict[str, bytes]) -> str:
    """One self-contained page: N*, fits, the figures inline (base64 PNG), the curve table."""
    sweep = html.escape(summary.sweep)
    images = "\n".join(
        f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for name, png in figures.items()
    )
    table = (
        curves.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—", border=0)
        if len(curves)
        else "<p>no finished runs</p>"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>jamsweep report: {sweep}</title>
<style>{STYLE}</style></head><body>
<h1>jamsweep report: {sweep}</h1>
<p>{summary.n_done} of {summary.n_runs} runs finished; ensembles average
the {html.escape(summary.ensemble_over)} seeds of each width; reduced at
{html.escape(summary.reduced_at)}.</p>
<h2>Jamming point N*</h2>
<table><tr><th>arch</th><th>N* (every seed at zero loss)</th><th>N* (half the seeds)</th>
<th>bracket</th></tr>
{_n_star_rows(summary)}
</table>
<h2>Fits</h2>
<table><tr><th>arch</th><th>fit</th><th>law</th><th>parameters (± 1σ)</th><th>range</th></tr>
{_fit_rows(summary)}
</table>
<h2>Figures</h2>
{images}
<h2>Curves (one row per architecture and width)</h2>
{table}
</body></html>
"""
