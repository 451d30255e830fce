"""A run's history: early stopping, the step budget's say in N*, training curves and the
snapshots' norms (workers.history), against hand loops and through a written sweep."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sweepfiles import EARLY_GAIN, SNAPSHOT_STEPS, measurement_steps, snapshot_f, write_sweep
from typer.testing import CliRunner

from orchestrator import sweep as api
from orchestrator.cli.app import app
from orchestrator.results import open_sweep
from workers import io
from workers.history import (
    RunTrace,
    budget_warning,
    converged_late,
    early_stop,
    snapshot_rows,
    still_falling,
    training_curve,
)
from workers.reduce import jamming


def trace(steps, loss, test=None) -> RunTrace:
    frame = pd.DataFrame({"step": steps, "loss": loss, "n_unsat": np.arange(len(steps))[::-1]})
    if test is not None:
        frame["test_error"] = test
    return RunTrace.from_frame(frame.sample(frac=1.0, random_state=0))  # any row order


def test_early_stop_is_the_first_step_of_the_best_test_error():
    t = trace([0, 10, 20, 30, 40], [1, 0.5, 0.2, 0.1, 0.0], [0.3, 0.2, 0.15, 0.15, 0.18])
    assert early_stop(t) == (0.15, 20)
    assert early_stop(trace([0, 10], [1, 0.5])) is None  # an older trace: no test error
    assert early_stop(trace([0, 10], [1, 0.5], [np.nan, np.nan])) is None


def test_late_convergence_and_a_loss_still_falling_at_the_budget():
    assert converged_late(950, True, 1000) and not converged_late(900, True, 1000)
    assert not converged_late(1000, False, 1000)  # not converged: not "late"
    falling = trace([0, 800, 900, 1000], [1.0, 0.5, 0.40, 0.30])
    flat = trace([0, 800, 900, 1000], [1.0, 0.5, 0.40, 0.399])  # 0.25% in the last tenth
    assert still_falling(falling, False, 1000) and not still_falling(flat, False, 1000)
    assert not still_falling(falling, True, 1000) and not still_falling(None, False, 1000)


def test_training_curve_carries_a_stopped_run_with_its_last_values():
    a = trace([0, 1, 2, 5], [1.0, 0.8, 0.5, 0.0], [0.3, 0.3, 0.2, 0.2])  # stopped at 5
    b = trace([0, 1, 2, 5, 10], [2.0, 1.6, 1.0, 0.5, 0.25], [0.4, 0.3, 0.3, 0.25, 0.2])
    rows = {r["step"]: r for r in training_curve([a, b])}
    assert sorted(rows) == [0, 1, 2, 5, 10]
    assert rows[2]["loss_mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert rows[10]["loss_mean"] == pytest.approx((0.0 + 0.25) / 2)  # a frozen at its end
    assert rows[10]["test_error_mean"] == pytest.approx((0.2 + 0.2) / 2)
    assert (rows[5]["n_training"], rows[10]["n_training"]) == (1, 0)
    assert math.isnan(training_curve([a, trace([0, 3], [1, 0.5])])[0]["test_error_mean"])


def test_snapshot_rows_use_the_final_outputs_of_runs_that_had_stopped():
    rows = snapshot_rows([{0: 4.0, 50: 9.0}, {0: 2.0}], [100, 30], [16.0, 1.0], [0, 50])
    assert rows == [
        {"step": 0, "n_runs": 2, "n_stopped": 0, "f_norm2": 3.0},
        {"step": 50, "n_runs": 2, "n_stopped": 1, "f_norm2": 5.0},  # (9 + 1) / 2
    ]


def convergence(n_late, n_falling):
    return pd.DataFrame(
        {
            "arch": "a",
            "width": [1.0, 2.0, 3.0, 4.0],
            "n_params": [10, 20, 30, 40],
            "n_runs": 4,
            "n_seeds": 4,
            "n_converged": [0, 2, 4, 4],
            "max_steps": 1000,
            "n_late": n_late,
            "n_still_falling": n_falling,
        }
    )


def test_budget_warning_names_the_widths_that_make_n_star_the_budgets():
    def warn(table):
        return budget_warning(table, jamming(table)["a"])

    assert warn(convergence([0, 0, 0, 0], [4, 0, 0, 0])) is None  # far below N*: no say
    below = warn(convergence([0, 0, 0, 0], [0, 2, 0, 0]))
    assert "N = 20 (h=2) 2 of 4 runs' loss was still falling" in below
    assert below.startswith("N* may be the step budget's (max_steps = 1000)")
    late = warn(convergence([0, 0, 0, 3], [0, 0, 0, 0]))
    assert "N = 40 (h=4) 3 of 4 runs converged only in the last tenth" in late
    none = convergence([0, 0, 0, 0], [0, 0, 0, 2]).assign(n_converged=[0, 0, 1, 2])
    assert "N = 40 (h=4) 2 of 4 runs' loss was still falling" in warn(none)  # no N* at all


# -- through a sweep's files ----------------------------------------------------------------


def test_early_stopping_columns_from_the_traces(tmp_path):
    files = write_sweep(str(tmp_path), seeds=3, widths=[2, 4, 8])
    curves = api.reduce("synth", results=str(tmp_path), figures=False)
    metrics = open_sweep(files.layout.root).metrics()
    for row in curves.itertuples():
        runs = metrics[metrics["width"] == row.width]
        assert row.early_stop_error == pytest.approx(runs["test_error"].mean() - EARLY_GAIN)
        middles = [measurement_steps(int(s))[len(measurement_steps(int(s))) // 2]
                   for s in runs["steps"]]  # fmt: skip
        assert row.early_stop_step == np.median(middles)
    assert api.load_summary("synth", results=str(tmp_path)).notes == []


def test_older_traces_give_no_early_stopping_and_say_so(tmp_path):
    write_sweep(str(tmp_path), seeds=2, widths=[2, 4], trace="old")
    curves = api.reduce("synth", results=str(tmp_path), figures=False)
    assert curves["early_stop_error"].isna().all() and curves["early_stop_step"].isna().all()
    [note] = api.load_summary("synth", results=str(tmp_path)).notes
    assert note.startswith("no early-stopping curve: the runs' traces have no test error")
    write_sweep(str(tmp_path), sweep="bare", seeds=2, widths=[2, 4], trace=None)
    api.reduce("bare", results=str(tmp_path), figures=False)
    notes = api.load_summary("bare", results=str(tmp_path)).notes
    assert any("4 finished run(s) have no trace file" in n for n in notes)


def test_training_table_is_the_mean_of_the_trace_files(tmp_path):
    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 8])
    api.reduce("synth", results=str(tmp_path), figures=False)
    table = pd.read_parquet(files.layout.training)
    for spec_width in (2.0, 8.0):
        traces = [pq.read_table(files.layout.trace(*s.key)).to_pandas()
                  for s in files.specs if s.width == spec_width]  # fmt: skip
        mine = table[table["width"] == spec_width].set_index("step")
        for step, row in mine.iterrows():
            # by hand: each run's last row at or before the step
            last = [t[t["step"] <= step].iloc[-1] for t in traces]
            assert row["loss_mean"] == pytest.approx(np.mean([r["loss"] for r in last]))
            assert row["n_unsat_mean"] == pytest.approx(np.mean([r["n_unsat"] for r in last]))
        assert sorted(mine.index) == sorted({s for t in traces for s in t["step"]})


def test_snapshot_table_from_the_logits_files(tmp_path):
    """Widths h = 2 stop at step 30 (before the snapshot at 50): there their final outputs
    count; every run has its snapshot at 0."""
    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 4],
                        steps=lambda k, seed, conv: 30 if k == 0 else 120)  # fmt: skip
    api.reduce("synth", results=str(tmp_path), figures=False)
    table = pd.read_parquet(files.layout.snapshots)
    logits = open_sweep(files.layout.root).logits("test")
    for (width, step), row in table.set_index(["width", "step"]).iterrows():
        norms = []
        for spec in (s for s in files.specs if s.width == width):
            final = logits[(logits["run_id"] == spec.run_id)
                           & (logits["step"] == files.final_step[spec.run_id])]  # fmt: skip
            f = final["f"].to_numpy()
            norms.append(np.mean((f if step >= files.final_step[spec.run_id]
                                  else snapshot_f(f[:, None], step)[:, 0]) ** 2))  # fmt: skip
        assert row["f_norm2"] == pytest.approx(np.mean(norms), rel=1e-12)
        assert row["n_stopped"] == (2 if (width, step) == (2.0, 50) else 0)
    assert sorted(set(table["step"])) == SNAPSHOT_STEPS


def budget_limited(tmp_path):
    """N* at h = 6 (index 2): its runs converge at step 950 of 1000; h = 4, just below,
    ends unconverged at the budget with a loss still falling."""
    return write_sweep(
        str(tmp_path), seeds=2, widths=[2, 4, 6, 8],
        converged=lambda k, seed: k >= 2,
        steps=lambda k, seed, conv: 950 if k == 2 else (1000 if not conv else 300),
    )  # fmt: skip


def test_a_budget_limited_n_star_is_warned_in_reduce_show_and_the_report(tmp_path):
    files = budget_limited(tmp_path)
    runner = CliRunner()
    reduced = runner.invoke(app, ["reduce", files.layout.root])
    assert reduced.exit_code == 0, reduced.output
    summary = api.load_summary("synth", results=str(tmp_path))
    warning = summary.budget["fc5"]
    assert "N = 108 (h=4) 2 of 2 runs' loss was still falling at the end" in warning
    assert "N = 210 (h=6) 2 of 2 runs converged only in the last tenth" in warning
    assert f"warning: fc5: {warning}" in reduced.output.replace("\n", " ")
    assert "fit variance: none (1 usable point(s)" in reduced.output  # every fit, or why not
    curves = pd.read_parquet(files.layout.curves)
    assert curves["n_late"].tolist() == [0, 0, 2, 0]
    assert curves["n_still_falling"].tolist() == [2, 2, 0, 0]  # every unconverged run falls
    shown = runner.invoke(app, ["show", files.layout.root])
    assert "N* may be the step budget's" in shown.output
    page = io.read_text(api.report("synth", results=str(tmp_path)))
    assert "N* may be the step budget&#x27;s" in page


def test_no_budget_warning_when_n_star_is_far_from_the_budget(tmp_path):
    write_sweep(str(tmp_path), seeds=2, widths=[2, 4, 6])
    api.reduce("synth", results=str(tmp_path), figures=False)
    assert api.load_summary("synth", results=str(tmp_path)).budget == {}
