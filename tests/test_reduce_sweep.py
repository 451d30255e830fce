"""The streaming reduce of orchestrator.sweep on result files written directly (no Ray)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sweepfiles import write_sweep

from orchestrator import sweep as api
from orchestrator.results import open_sweep
from schemas.errors import JamsweepError
from workers import io
from workers.ensembles import ensemble_curve
from workers.outputs import outputs_matrix
from workers.reduce import ensemble_members, width_curve

ONE_OUTPUT_FIGURES = [
    "fig2_test_error",
    "fig4_ensemble",
    "fig5_output_variance",
    "fig6_gradient_and_gap",
    "fig7a_output_norm",
    "fig7b_output_norm_in_time",
    "training_curves",
]


def reference_tables(root: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The slow way: every run in one pandas frame, then the pure functions per width."""
    sweep = open_sweep(root)
    metrics = sweep.metrics()
    logits = sweep.logits("test").merge(metrics[["run_id", "steps"]], on="run_id")
    final = logits[logits["step"] == logits["steps"]]
    curves, ensemble = [], []
    for (arch, width), rows in final.groupby(["arch", "width"]):
        m = metrics[(metrics["arch"] == arch) & (metrics["width"] == width)]
        outputs = outputs_matrix(rows)
        curves.append({"arch": arch, "width": width, **width_curve(m, outputs)})
        members = ensemble_members(m, outputs.run_ids, "converged")
        ensemble += [{"arch": arch, "width": width, **r} for r in ensemble_curve(outputs, members)]
    return pd.DataFrame(curves), pd.DataFrame(ensemble)


@pytest.mark.parametrize("n_outputs", [1, 10])
def test_streaming_reduce_equals_the_all_in_one_frame_reduction(tmp_path, n_outputs):
    files = write_sweep(str(tmp_path), n_outputs=n_outputs, seeds=5, widths=[2, 4, 8, 16, 32])
    curves = api.reduce("synth", results=str(tmp_path), figures=False)
    want_curves, want_ensemble = reference_tables(files.layout.root)
    got = curves.sort_values("width").reset_index(drop=True)
    assert (got["arch"] == want_curves["arch"]).all()
    for column in want_curves.columns.drop("arch"):
        assert np.allclose(
            got[column].to_numpy(float),
            want_curves[column].to_numpy(float),
            rtol=1e-12,
            equal_nan=True,
        ), column
    ensemble = pd.read_parquet(files.layout.ensemble).sort_values(["width", "n"])
    # excess_error_inf comes from the fit of the whole series (tests/test_ensemble_fits.py)
    for column in want_ensemble.columns.drop(["arch", "excess_error_inf"]):
        assert np.allclose(
            ensemble[column].to_numpy(float), want_ensemble[column].to_numpy(float), rtol=1e-12
        ), column


def test_reduce_reads_the_final_step_not_the_snapshot(tmp_path):
    """sweepfiles computes each run's test error from its final outputs; the step-0 snapshot
    in the same file has other outputs, so reading it would change the mean error."""
    files = write_sweep(str(tmp_path), seeds=3)
    curves = api.reduce("synth", results=str(tmp_path), figures=False)
    metrics = open_sweep(files.layout.root).metrics()
    want = metrics.groupby("n_params")["test_error"].mean()
    got = curves.set_index("n_params")["test_error_mean"]
    assert np.allclose(got, want.loc[curves["n_params"]])


def test_reduce_writes_curves_ensemble_summary_and_figures(tmp_path):
    files = write_sweep(str(tmp_path), seeds=4, widths=[2, 3, 4, 6, 8, 12, 16, 24, 32, 48])
    api.reduce("synth", results=str(tmp_path), max_subsets=3)
    layout = files.layout
    curves = pd.read_parquet(layout.curves)
    assert len(curves) == 10 and curves["n_params"].is_monotonic_increasing
    assert (curves["n_seeds"] == 4).all()
    # default_converged(5): widths 0..3 none or half, 5.. all: N* is the 6th width's N
    n_star = int(curves["n_params"].iloc[5])
    summary = json.loads(io.read_text(layout.summary))
    assert summary["n_star"] == {"fc5": n_star}
    assert summary["n_star_bracket"] == {"fc5": [8.0, 12.0]}
    assert summary["n_star_half"]["fc5"] == float(curves["n_params"].iloc[4])  # 2 of 4 there
    assert np.allclose(curves["n_over_nstar"], curves["n_params"] / n_star)
    assert summary["fits"]["fc5"]["gap"]["n_range"][0] > n_star
    ensemble = pd.read_parquet(layout.ensemble)
    per_width = ensemble.groupby("n_params")["n"].max()
    members = curves.set_index("n_params")["n_ensembled"]
    assert (per_width == members.loc[per_width.index]).all()
    full = ensemble[ensemble["n_params"] == n_star]  # 4 members: C(4, n) = 4, 6, 4, 1
    assert full["n_subsets"].tolist() == [3, 3, 3, 1]  # sampled where more than 3
    assert full["exact"].tolist() == [False, False, False, True]
    pngs = io.list_files(layout.figures_dir, ".png")
    assert {p.rsplit("/", 1)[1] for p in pngs} == {f"{name}.png" for name in ONE_OUTPUT_FIGURES}
    assert all(io.read_bytes(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_reduce_of_a_sweep_without_finished_runs_is_a_clear_error_and_writes_nothing(tmp_path):
    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 3])
    for spec in files.specs:
        io.delete(files.layout.metrics(*spec.key))
    for path in (files.layout.curves, files.layout.ensemble, files.layout.summary):
        io.delete(path)
    with pytest.raises(JamsweepError, match="no finished run to reduce yet"):
        api.reduce("synth", results=str(tmp_path))
    assert not io.exists(files.layout.curves) and not io.exists(files.layout.summary)
    assert not io.exists(files.layout.figures_dir)


@pytest.mark.parametrize("how", ["missing logits", "torn logits", "torn trace"])
def test_a_run_whose_files_cannot_be_read_is_set_aside_and_the_rest_reduced(tmp_path, how):
    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 3])
    spec = files.specs[0]
    path = files.layout.trace(*spec.key) if how == "torn trace" else files.layout.logits(*spec.key)
    data = io.read_bytes(path)
    if how == "missing logits":
        io.delete(path)
    else:
        io.write_bytes(path, data[: len(data) // 2])  # a partial copy: no footer
    curves = api.reduce("synth", results=str(tmp_path), figures=False)
    row = curves[curves.width == spec.width].iloc[0]
    assert row.n_seeds == 1 and row.n_runs == 2  # the run counts as unfinished
    summary = json.loads(io.read_text(files.layout.summary))
    assert any(
        "1 finished run(s) had result files that cannot be read" in n for n in summary["notes"]
    )
    assert not io.exists(files.layout.metrics(*spec.key))  # moved, so it is trained again
    moved = list((tmp_path / "synth" / "set_aside").rglob("*.parquet"))
    assert len(moved) == (2 if how == "missing logits" else 3)  # nothing deleted


def test_n_star_needs_every_run_of_the_width_not_just_the_finished_ones(tmp_path):
    files = write_sweep(str(tmp_path), seeds=4, widths=[2, 3, 4, 6])
    curves = api.reduce("synth", results=str(tmp_path), figures=False)
    n_star = json.loads(io.read_text(files.layout.summary))["n_star"]["fc5"]
    assert n_star is not None
    # drop one finished run at the jamming width: its width no longer counts as jammed
    jammed = curves[curves.n_params == n_star].iloc[0]
    spec = next(s for s in files.specs if s.width == jammed.width)
    io.delete(files.layout.metrics(*spec.key))
    api.reduce("synth", results=str(tmp_path), figures=False)
    assert json.loads(io.read_text(files.layout.summary))["n_star"]["fc5"] != n_star


def test_a_run_without_final_test_outputs_is_reported(tmp_path):
    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 3])
    spec = files.specs[1]
    table = pq.read_table(files.layout.logits(*spec.key))
    io.write_table(files.layout.logits(*spec.key), table.filter(pc.equal(table["step"], 0)))
    with pytest.raises(JamsweepError, match=f"run {spec.run_id}.*final step"):
        api.reduce("synth", results=str(tmp_path), figures=False)


def test_ensemble_over_all_includes_unconverged_seeds(tmp_path):
    write_sweep(str(tmp_path), seeds=4, widths=[2, 3, 4, 6])
    conv = api.reduce("synth", results=str(tmp_path), figures=False)
    every = api.reduce("synth", results=str(tmp_path), figures=False, ensemble_over="all")
    assert conv["n_ensembled"].tolist() == [0, 2, 4, 4]  # default_converged(2)
    assert every["n_ensembled"].tolist() == [4, 4, 4, 4]
    assert math.isnan(conv["ens_test_error"].iloc[0])
    assert not math.isnan(every["ens_test_error"].iloc[0])
    assert api.load_summary("synth", results=str(tmp_path)).ensemble_over == "all"


def test_a_largest_width_without_a_finished_run_leaves_n_star_undefined(tmp_path):
    """Issue 18, defect 3: DESIGN section 1 says a width with an unfinished or failed run is
    not jammed; a width none of whose runs finished is such a width. With the largest
    width's metrics gone (its runs failed), the sweep has no N*, no bracket and no fits;
    the width keeps its row of curves (no seeds, no numbers)."""
    widths = [2, 3, 4, 6, 8]
    files = write_sweep(str(tmp_path), seeds=3, widths=widths)  # default_converged(2)
    for spec in files.specs:
        if spec.width == 8:
            io.delete(files.layout.metrics(*spec.key))
    curves = api.reduce("synth", results=str(tmp_path), figures=False)
    summary = api.load_summary("synth", results=str(tmp_path))
    assert summary.n_star == {"fc5": None} and summary.n_star_bracket == {"fc5": None}
    assert all(not fit.ok and "no N*" in fit.reason for fit in summary.fits["fc5"].values())
    assert curves["width"].tolist() == [2.0, 3.0, 4.0, 6.0, 8.0]
    last = curves.iloc[-1]
    assert (last["n_runs"], last["n_seeds"], last["n_converged"]) == (3, 0, 0)
    assert math.isnan(last["test_error_mean"]) and math.isnan(last["f_var_all"])
    assert summary.n_done == 12 and summary.n_runs == 15


def test_a_mid_sweep_reduce_puts_n_star_above_a_width_still_running(tmp_path):
    """A middle width whose runs have not finished is not jammed: N* is above it."""
    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 3, 4, 6, 8, 12])  # jams from h=6
    for spec in files.specs:
        if spec.width == 8:
            io.delete(files.layout.metrics(*spec.key))
    curves = api.reduce("synth", results=str(tmp_path), figures=False)
    summary = api.load_summary("synth", results=str(tmp_path))
    n_12 = int(curves.loc[curves["width"] == 12, "n_params"].item())
    assert summary.n_star == {"fc5": n_12} and summary.n_star_bracket == {"fc5": (8.0, 12.0)}


def test_a_dead_net_is_counted_per_width_and_named_in_the_notes(tmp_path):
    """A net whose input gradient is zero on every test point (every ReLU off) is dead:
    `n_dead` counts it at its width and the summary's notes say where."""
    files = write_sweep(str(tmp_path), seeds=3, widths=[2, 4, 8])
    dead = next(s for s in files.specs if s.width == 4 and s.seed == 1)
    path = files.layout.logits(*dead.key)
    table = pq.read_table(path)
    test = pc.equal(table.column("split"), "test")
    grads = pc.if_else(test, 0.0, table.column("grad_norm"))
    io.write_table(
        path, table.set_column(table.schema.get_field_index("grad_norm"), "grad_norm", grads)
    )
    curves = api.reduce("synth", results=str(tmp_path), figures=False).set_index("width")
    assert curves["n_dead"].to_dict() == {2: 0, 4: 1, 8: 0}
    notes = api.load_summary("synth", results=str(tmp_path)).notes
    assert any("dead nets" in n and f"1 of 3 at N = {dead.n_params}" in n for n in notes), notes
