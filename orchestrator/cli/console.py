"""What the CLI prints: tables, submit's live progress bar, status's in-place view, one
run, a sweep's overview. Rich when the output is a terminal; plain lines when it is not, so
that CI logs stay readable."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterable

import pandas as pd
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

from orchestrator import sweep as api
from orchestrator.cli.overview import RunDetail, SweepOverview
from orchestrator.cluster.progress import Progress, format_duration
from orchestrator.results.formats import MISSING, fit_line, k_of_n, line_points, number
from schemas.axes import axis_values, point_label
from schemas.run import RunRecord
from schemas.summary import Summary

# Wide enough for the tables when output goes to a file or a pipe (rich's default is 80).
# markup off: messages carry user text such as architectures[fc3], which rich would eat
out = Console(markup=False, highlight=False, width=None if sys.stdout.isatty() else 140)
err = Console(
    stderr=True, markup=False, highlight=False, width=None if sys.stderr.isatty() else 140
)

MAX_ROWS = 100  # runs listed by `status` before it says how many more there are


# -- submit's progress -------------------------------------------------------------------


class SubmitProgress:
    """A live bar on a terminal (done/failed/running, rate, ETA; the per-run lines scroll
    above it); on anything else, the per-run lines plus a plain progress line at most every
    `plain_every_s` seconds and once at the end."""

    def __init__(self, console: Console, plain_every_s: float = 10.0) -> None:
        self.console = console
        self.plain_every_s = plain_every_s
        self.bar: RichProgress | None = None
        self.task: TaskID | None = None
        self.last: Progress | None = None
        self.printed: tuple[float, int] | None = None  # (when, finished) of the last line

    def __enter__(self) -> SubmitProgress:
        if self.console.is_terminal:
            self.bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA {task.fields[eta]}"),
                console=self.console,
                refresh_per_second=4,
            )
            self.bar.start()
        return self

    def echo(self, line: str) -> None:
        self.console.print(line, soft_wrap=True, markup=False, highlight=False)

    def update(self, p: Progress) -> None:
        self.last = p
        if self.bar is None:
            self._plain(p)
            return
        counts = f"done {p.done}  failed {p.failed}  running {p.running}"
        rate = f"{p.rate_per_min:.1f} runs/min" if p.rate_per_min is not None else ""
        eta = format_duration(p.eta_s)
        if self.task is None:
            self.task = self.bar.add_task(
                p.sweep, total=p.total, completed=p.finished, counts=counts, rate=rate, eta=eta
            )
        self.bar.update(self.task, completed=p.finished, counts=counts, rate=rate, eta=eta)

    def _plain(self, p: Progress, final: bool = False) -> None:
        now = time.monotonic()
        if self.printed is not None:
            when, finished = self.printed
            if finished == p.finished and not final:
                return
            if now - when < self.plain_every_s and p.finished < p.total and not final:
                return
        self.console.print(p.line(), soft_wrap=True, markup=False)
        self.printed = (now, p.finished)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.last is not None and (
            self.printed is None or self.printed[1] != self.last.finished
        ):
            self._plain(self.last, final=True)  # the final counts, once


# -- status ------------------------------------------------------------------------------


def counts_line(st: api.SweepStatus) -> str:
    counts = "  ".join(f"{s} {n}" for s, n in st.counts.items())
    return f"{st.sweep}: {counts}  ({len(st.records)} runs, {st.source})"


def runs_table(records: list[RunRecord], points: dict[str, str] | None = None) -> RenderableType:
    """The runs (at most MAX_ROWS of them) and, if cut, how many more there are; with the
    point of each run when the sweep's axes vary (`points`: run_id -> point)."""
    points = points or {}
    at = ["point"] if points else []
    table = Table("run_id", "arch", *at, "width", "seed", "N", "state", "attempts", "node", "error")
    ordered = sorted(records, key=lambda r: (r.arch, points.get(r.run_id, ""), r.width, r.seed))
    for r in ordered[:MAX_ROWS]:
        table.add_row(
            r.run_id,
            r.arch,
            *([points.get(r.run_id, "")] if points else []),
            f"{r.width:g}",
            str(r.seed),
            str(r.n_params),
            r.state.value,
            str(r.attempts),
            r.node or "",
            (r.error or "")[:60],
        )
    if len(ordered) <= MAX_ROWS:
        return table
    more = f"... and {len(ordered) - MAX_ROWS} more runs: filter with --state, or --json for all"
    return Group(table, Text(more))


def status_view(st: api.SweepStatus, states: set[str] | None) -> RenderableType:
    records = [r for r in st.records if states is None or r.state.value in states]
    if states is not None and not records:
        return Group(Text(counts_line(st)), Text(f"no run is {' or '.join(sorted(states))}"))
    return Group(Text(counts_line(st)), runs_table(records, st.points))


def watch(
    looks: Iterable[api.SweepStatus], view: Callable[[api.SweepStatus], RenderableType]
) -> None:
    """Redraw the status in place (rich Live) at each look until they end (the round did).
    Not on a terminal: a counts line whenever the counts change, then the whole view once."""
    looks = iter(looks)
    first = next(looks)
    if not out.is_terminal:
        shown, last = None, first
        for last in itertools.chain([first], looks):
            if last.counts != shown:
                out.print(counts_line(last), soft_wrap=True)
                shown = last.counts
        out.print(view(last))
        return
    with Live(view(first), console=out, auto_refresh=False) as live:
        for st in looks:
            live.update(view(st), refresh=True)


# -- one run, a sweep ------------------------------------------------------------------------


def print_run(d: RunDetail) -> None:
    r = d.record
    width = f"{r.width:g}"
    at = f" {d.point}" if d.point else ""
    out.print(f"run {r.run_id}: {r.arch}{at} width={width} seed={r.seed} N={r.n_params}")
    out.print(f"  state     {r.state.value} (attempts {r.attempts}, node {r.node or '-'})")
    for name in ("submitted_at", "started_at", "ended_at"):
        value = getattr(r, name)
        if value is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
            out.print(f"  {name:<13} {when}")
    out.print(f"  error     {r.error or '-'}", soft_wrap=True)
    if d.metrics is not None:
        m = d.metrics
        conv = "converged" if m.get("converged") else f"{m.get('n_unsat')} unsatisfied"
        out.print(
            f"  result    {m.get('steps')} steps, {conv}, train loss {m.get('train_loss'):.3g}, "
            f"test error {m.get('test_error'):.4f}, {m.get('wall_s', 0):.1f} s on {m.get('device')}"
        )
    for what, path in d.files.items():
        out.print(f"  {what:<10}{path}", soft_wrap=True)
    if d.trace_tail is None:
        out.print("  log       none: jamsweep keeps no per-run log file; a run's trace (loss and")
        out.print("            N_Delta at each measurement step) is written when it ends")
        return
    out.print(f"  log       no per-run log file is kept; the last {len(d.trace_tail)} rows of its")
    out.print("            trace (loss, N_Delta, ... at the measurement steps):")
    out.print(d.trace_tail.to_string(index=False), soft_wrap=True)


def print_overview(o: SweepOverview) -> None:
    out.print(f"sweep {o.layout.sweep} in {o.layout.root}")
    out.print("grid.yaml:")
    out.print(o.grid_text.rstrip(), markup=False, soft_wrap=True)
    if o.data is not None:
        out.print(o.data, markup=False, soft_wrap=True)
    out.print(counts_line(o.status))
    if o.summary is None:
        out.print(f"not reduced yet: jamsweep reduce {o.layout.root}", soft_wrap=True)
    else:
        if o.curves is not None:
            print_curves(o.curves)
        print_summary(o.summary)
    out.print(f"figures:  {', '.join(o.figures) if o.figures else 'none yet'}", soft_wrap=True)
    out.print(f"report:   {o.report or f'none yet (jamsweep report {o.layout.root})'}")


# -- tables that commands share ----------------------------------------------------------


def print_planned(specs: list, axes: list[str] | None = None) -> None:
    for s in specs:
        w = f"{api.width_symbol(s.arch.kind)}={s.width:g}"
        # a files dataset not visible here is read on the cluster: N (and the id) too
        known = s.dataset.name != "files" or s.dataset.resolved is not None
        n, run_id = (s.n_params, s.run_id) if known else ("? (read on the cluster)", "?" * 16)
        values = axis_values(s.dataset, s.training)
        at = point_label({k: values[k] for k in axes or []})
        out.print(f"  {run_id}  {s.arch.name}  {at + '  ' if at else ''}{w}  seed={s.seed}  N={n}")


def print_dry_run(report: api.SubmitReport, where: str) -> None:
    """What a submission would do: how many runs, where they go, which would run, and the
    finished runs that a grid which no longer names them drops from the curves."""
    n = len(report.planned)
    out.print(
        f"sweep {report.sweep}: {report.n_runs} runs, {report.n_already_done} done, "
        f"{n} would run" + (":" if n else "."),
        soft_wrap=True,
    )
    if report.product:
        out.print(f"grid: {report.product}", soft_wrap=True)
    if report.replaced:
        out.print(
            f"--force: the sweep's previous results (another grid) would be moved aside to "
            f"{report.sweep}.replaced-TIMESTAMP beside it, and every run trained afresh",
            soft_wrap=True,
        )
    print_planned(report.planned, report.axis_names)
    if report.broken:
        out.print(
            f"{len(report.broken)} finished run(s) have result files that cannot be read: "
            "they would be set aside (SWEEP/set_aside/) and trained again"
        )
    if report.dropped:
        out.print(
            f"{len(report.dropped)} run(s) of the sweep that this grid no longer names would "
            "leave the manifest and the curves (their files stay):"
        )
        print_planned(report.dropped, report.axis_names)
    out.print(f"Results would go to {where}.", soft_wrap=True)


def print_failed(records: list) -> None:
    for r in records:
        what = f"{r.arch} width={r.width:g} seed={r.seed} ({r.run_id})"
        err.print(f"failed: {what}: {r.error}", soft_wrap=True)


def print_summary(summary: Summary) -> None:
    """N* (all runs / half the runs), every fit with its quality and flags, the budget's
    warnings and the reducer's notes."""
    for arch, n_star in summary.n_star.items():
        half = summary.n_star_half.get(arch)
        smallest = summary.smallest_jammed_n.get(arch)
        smallest_text = f"; smallest jammed N = {smallest}" if smallest is not None else ""
        if n_star is None and half is None:
            out.print(f"{arch}: N* = {MISSING} (no width where every run fits the training set)")
        else:
            out.print(
                f"{arch}: N* = {number(n_star, 'd')} (every run, at every larger width too), "
                f"{number(half, '.1f')} (half the runs){smallest_text}",
                soft_wrap=True,
            )
        for name, fit in summary.fits.get(arch, {}).items():
            out.print(f"  {fit_line(name, fit)}", soft_wrap=True, markup=False)
            for flag in fit.flags:
                out.print(f"    ! {flag}", soft_wrap=True, markup=False)
    for key, line in summary.jamming_line.items():
        out.print(f"{key}: jamming line N*(P)", soft_wrap=True, markup=False)
        out.print(f"  {fit_line('jamming_line', line.fit)}", soft_wrap=True, markup=False)
        for flag in line.fit.flags:
            out.print(f"    ! {flag}", soft_wrap=True, markup=False)
        for text in line_points(line):
            out.print(f"  {text}", soft_wrap=True, markup=False)
    for arch, warning in summary.budget.items():
        err.print(f"warning: {arch}: {warning}", soft_wrap=True, markup=False)
    for note in summary.notes:
        out.print(f"note: {note}", soft_wrap=True, markup=False)


def print_curves(curves: pd.DataFrame) -> None:
    """The curve table: one row per width, `converged` as k/n of the width's runs, MISSING
    where a value does not exist (no ensemble, a width not finished)."""
    if curves.empty:
        out.print("no finished runs to reduce yet")
        return
    points = "point" in curves.columns and bool((curves["point"] != "").any())
    table = Table(
        "arch",
        *(["point"] if points else []),
        "width",
        "N",
        "converged",
        "test err",
        "± std",
        "early stop",
        "ensemble err",
        "gap",
        "train loss",
    )
    for r in curves.itertuples():
        table.add_row(
            str(r.arch),
            *([str(r.point)] if points else []),
            f"{r.width:g}",
            str(r.n_params),
            k_of_n(r.n_converged, r.n_runs),
            number(r.test_error_mean, ".4f"),
            number(r.test_error_std, ".4f"),
            number(getattr(r, "early_stop_error", None), ".4f"),
            number(r.ens_test_error, ".4f"),
            number(r.gap, ".3g"),
            number(r.train_loss_mean, ".2e"),
        )
    out.print(table)
