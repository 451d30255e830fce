"""The one-page HTML report of a reduced sweep: warnings, N*, every fit with its quality
and flags, every figure (inline PNG) and those that could not be drawn, and a curve table
narrow enough for the page (every column is in curves.parquet)."""

from __future__ import annotations

import base64
import html

import pandas as pd

from orchestrator.results.figures import to_bytes
from orchestrator.results.formats import (
    MISSING,
    fit_quality,
    fit_values,
    k_of_n,
    line_points,
    number,
    paper_comparison,
)
from orchestrator.results.plots import render_figures
from orchestrator.results.reduced import Reduced, read_reduced
from schemas.layout import RESULTS_DEFAULT
from schemas.summary import Summary
from workers import io

# the report's curve table: (heading, how a row of curves.parquet reads in it)
TABLE = [
    ("arch", lambda r: str(r.arch)),
    ("h", lambda r: f"{r.width:g}"),
    ("N", lambda r: str(r.n_params)),
    ("converged", lambda r: k_of_n(r.n_converged, r.n_runs)),
    ("test error", lambda r: number(r.test_error_mean, ".4f")),
    ("± std", lambda r: number(r.test_error_std, ".4f")),
    ("early stop", lambda r: number(r.early_stop_error, ".4f")),
    ("ensemble", lambda r: number(r.ens_test_error, ".4f")),
    ("gap", lambda r: number(r.gap, ".3g")),
    ("‖f‖²", lambda r: number(r.f_norm**2, ".3g")),
    ("‖f − f̄‖² (all)", lambda r: number(r.f_var_all, ".3g")),
    ("‖∇f‖ median", lambda r: number(r.grad_norm_median, ".3g")),
    ("δ", lambda r: number(r.delta, ".3g")),
]

STYLE = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0;max-width:100%}td,th{border:1px
solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}th{background:#f3f3f3}
td.text{text-align:left}tr.flagged td{background:#fff6e0}.warn{background:#fff6e0;border:
1px solid #e0b040;padding:.5em 1em}img{max-width:100%;display:block;margin:.5em 0 1.5em}
ul.flags{margin:0;padding-left:1.2em;text-align:left}"""


def report(sweep: str, *, results: str = RESULTS_DEFAULT, output: str | None = None) -> str:
    """Write one self-contained HTML page (figures, fits, curve table); return its path."""
    layout, reduced = read_reduced(sweep, results)
    rendered = render_figures(reduced, layout)
    pngs = {name: to_bytes(fig) for name, fig in rendered.figures.items()}
    target = output or layout.report
    io.write_text(target, report_html(reduced, pngs, rendered.missing))
    return target


def report_html(reduced: Reduced, figures: dict[str, bytes], missing: dict[str, str]) -> str:
    """One self-contained page: warnings, N*, fits, the figures inline (base64 PNG), those
    not drawn and why, the curve table."""
    summary = reduced.summary
    sweep = html.escape(summary.sweep)
    images = "\n".join(
        f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for name, png in figures.items()
    )
    not_drawn = "".join(
        f"<li>{html.escape(name)}: {html.escape(why)}</li>" for name, why in missing.items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>jamsweep report: {sweep}</title>
<style>{STYLE}</style></head><body>
<h1>jamsweep report: {sweep}</h1>
<p>{summary.n_done} of {summary.n_runs} runs finished; ensembles average the
{html.escape(summary.ensemble_over)} seeds of each width; reduced at
{html.escape(summary.reduced_at)}. {MISSING} marks a value that does not exist.</p>
{_warnings(summary)}
<h2>Jamming point N*</h2>
<table><tr><th>arch</th><th>N* (every run at zero loss)</th><th>N* (half the runs)</th>
<th>bracket</th><th>smallest jammed N</th></tr>
{_n_star_rows(summary)}
</table>
{_jamming_lines(summary)}
<h2>Fits</h2>
<table><tr><th>arch</th><th>fit</th><th>law</th><th>parameters (± 1σ)</th><th>quality</th>
<th>flags</th></tr>
{_fit_rows(summary)}
</table>
<h2>Figures</h2>
{images}
{f"<p>Not drawn:</p><ul>{not_drawn}</ul>" if not_drawn else ""}
<h2>Curves (one row per architecture and width; every column in curves.parquet)</h2>
{_curve_table(reduced.curves)}
</body></html>
"""


def _warnings(summary: Summary) -> str:
    items = [f"{html.escape(a)}: {html.escape(w)}" for a, w in summary.budget.items()]
    items += [html.escape(n) for n in summary.notes]
    if not items:
        return ""
    return '<div class="warn"><ul>' + "".join(f"<li>{i}</li>" for i in items) + "</ul></div>"


def _n_star_rows(summary: Summary) -> str:
    rows = []
    for arch, n_star in summary.n_star.items():
        half = summary.n_star_half.get(arch)
        bracket = summary.n_star_bracket.get(arch)
        smallest = summary.smallest_jammed_n.get(arch, n_star)
        rows.append(
            f"<tr><td class=text>{html.escape(arch)}</td><td>{number(n_star, 'd')}</td>"
            f"<td>{number(half, '.1f')}</td>"
            f"<td>{f'h ∈ ({bracket[0]:g}, {bracket[1]:g}]' if bracket else MISSING}</td>"
            f"<td>{number(smallest, 'd')}</td></tr>"
        )
    return "\n".join(rows)


def _jamming_lines(summary: Summary) -> str:
    """The fit N* = c P^a per architecture (when train_size is an axis), and its points."""
    if not summary.jamming_line:
        return ""
    rows = []
    for key, line in summary.jamming_line.items():
        fit = line.fit
        values = fit_values(fit) if fit.ok else MISSING
        quality = (fit_quality(fit) + f"; {paper_comparison(fit)}") if fit.ok else fit.reason
        flags = "".join(f"<li>{html.escape(f)}</li>" for f in fit.flags)
        points = "".join(f"<li>{html.escape(p)}</li>" for p in line_points(line))
        rows.append(
            f"<tr{' class=flagged' if fit.flags else ''}><td class=text>{html.escape(key)}</td>"
            f"<td class=text>{html.escape(values)}</td><td class=text>"
            f"{html.escape(quality or '')}</td><td class=text>"
            f"{f'<ul class=flags>{flags}</ul>' if flags else MISSING}</td>"
            f"<td class=text><ul class=flags>{points}</ul></td></tr>"
        )
    return (
        "<h2>Jamming line N*(P)</h2>\n<p>The fit N* = c P^a in log-log through the "
        "brackets (N of the width below, N*] of each P, their half-widths as errors.</p>\n"
        "<table><tr><th>arch</th><th>c, a (± 1σ)</th><th>quality</th><th>flags</th>"
        "<th>points</th></tr>\n" + "\n".join(rows) + "\n</table>"
    )


def _fit_rows(summary: Summary) -> str:
    rows = []
    for arch, fits in summary.fits.items():
        for name, fit in fits.items():
            if fit.ok:
                values = fit_values(fit)
                quality = fit_quality(fit)
                paper = paper_comparison(fit)
                quality += f"; {paper}" if paper else ""
            else:
                values, quality = MISSING, fit.reason or ""
            flags = "".join(f"<li>{html.escape(f)}</li>" for f in fit.flags)
            rows.append(
                f"<tr{' class=flagged' if fit.flags else ''}><td class=text>{html.escape(arch)}"
                f"</td><td class=text>{html.escape(name)}</td><td class=text>"
                f"{html.escape(fit.law)}</td><td class=text>{html.escape(values)}</td>"
                f"<td class=text>{html.escape(quality)}</td><td class=text>"
                f"{f'<ul class=flags>{flags}</ul>' if flags else MISSING}</td></tr>"
            )
    return "\n".join(rows)


def _curve_table(curves: pd.DataFrame) -> str:
    if curves.empty:
        return "<p>no finished runs</p>"
    columns = TABLE
    if "point" in curves.columns and (curves["point"] != "").any():  # a sweep with axes
        columns = [TABLE[0], ("point", lambda r: str(r.point)), *TABLE[1:]]
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(r))}</td>" for _, cell in columns) + "</tr>"
        for r in curves.itertuples()
    )
    return f"<table><tr>{head}</tr>\n{body}</table>"
