"""End to end through the CLI, in fresh processes, on a real embedded Ray (2 CPUs)."""

from __future__ import annotations

import json
import os
import re
import subprocess

import numpy as np
import pandas as pd
import pytest

from schemas.axes import AXES
from tests.conftest import _descendants, jamsweep, write_grid

pytestmark = pytest.mark.ray

TINY = """
sweep: tiny
dataset: {name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 10}
architectures:
  - {name: fc3, depth: 3, widths: [1.5, 6]}
seeds: 2
training: {lr_max: 0.01, max_steps: 400}
resources: {num_cpus: 1, max_retries: 1}
"""

LAYOUT = {
    "layout.json",
    "grid.yaml",
    "manifest.parquet",
    "status.parquet",
    "logits",
    "metrics",
    "trace",
    "curves.parquet",
    "ensemble.parquet",
    "training.parquet",
    "snapshots.parquet",
    "summary.json",
    "figures",
    "models",
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny sweep, run once for the module."""
    root = tmp_path_factory.mktemp("e2e")
    grid = write_grid(root / "tiny.yaml", TINY)
    proc = jamsweep("submit", str(grid), "--results", str(root / "res"), "--num-cpus", "2")
    return root, grid, proc


def test_submit_exits_zero_and_writes_the_layout(finished):
    root, grid, proc = finished
    assert proc.returncode == 0, proc.stderr
    sweep = root / "res" / "tiny"
    assert {p.name for p in sweep.iterdir()} <= LAYOUT
    assert {
        "grid.yaml",
        "manifest.parquet",
        "status.parquet",
        "logits",
        "metrics",
        "curves.parquet",
        "summary.json",
    } <= {p.name for p in sweep.iterdir()}
    assert (sweep / "grid.yaml").read_text() == grid.read_text()  # verbatim
    assert json.loads((sweep / "layout.json").read_text()) == {"layout": 2}
    run_ids = pd.read_parquet(sweep / "manifest.parquet")["run_id"]
    for table in ("logits", "metrics", "trace"):  # layout 2: one flat file per run
        files = sorted(
            p.relative_to(sweep / table).as_posix()
            for p in (sweep / table).rglob("*")
            if p.is_file()
        )
        assert files == sorted(f"{r}.parquet" for r in run_ids)
    models = sorted(
        p.relative_to(sweep / "models").as_posix() for p in (sweep / "models").rglob("*.pt")
    )
    assert models == sorted(f"{r}.pt" for r in run_ids)
    assert "[4/4] done" in proc.stderr
    assert "Traceback" not in proc.stderr
    figures = sorted((sweep / "figures").glob("*.png"))
    assert len(figures) >= 5 and all(f.stat().st_size > 10_000 for f in figures)


def test_logits_read_with_pandas_one_row_per_run_split_sample(finished):
    root, _, _ = finished
    logits = pd.read_parquet(root / "res" / "tiny" / "logits")
    expected = {
        "run_id",
        "arch",
        "width",
        "seed",
        *AXES,  # every run's value of every sweep axis, typed
        "n_params",
        "split",
        "sample",
        "step",
        "label",
        "f",
        "grad_norm",
    }
    assert set(logits.columns) == expected
    assert logits["width"].dtype == np.float64 and logits["seed"].dtype == np.int64
    assert sorted(logits["width"].unique()) == [1.5, 6.0]  # numbers, not text categories
    assert set(logits["train_size"]) == {60} and set(logits["lr_max"]) == {0.01}
    assert len(logits) == 4 * (60 + 100)
    assert logits.groupby(["run_id", "split"]).size().to_dict() == {
        (r, s): n for r in logits["run_id"].unique() for s, n in (("train", 60), ("test", 100))
    }
    assert not logits.duplicated(["run_id", "split", "sample", "step"]).any()
    assert logits["f"].dtype == np.float64 and set(logits["label"]) == {-1, 1}
    test_grad = logits.loc[logits["split"] == "test", "grad_norm"]
    assert test_grad.notna().all() and test_grad.ge(0).all() and test_grad.gt(0).any()
    assert logits.loc[logits["split"] == "train", "grad_norm"].isna().all()  # test set only


def test_metrics_and_curves_agree_with_the_raw_outputs(finished):
    from orchestrator.results import open_sweep

    root, _, _ = finished
    sw = open_sweep(str(root / "res" / "tiny"))
    logits, metrics, curves = sw.logits(split="test"), sw.metrics(), sw.curves()
    assert len(metrics) == 4 and metrics["width"].dtype == np.float64
    for run in metrics.itertuples():
        f = logits[(logits.run_id == run.run_id) & (logits.step == run.steps)]
        assert run.test_error == pytest.approx(np.mean(f.label * f.f <= 0))
    for row in curves.itertuples():  # ensemble over converged seeds, by a hand loop
        m = metrics[metrics.width == row.width]
        assert row.n_seeds == 2 and row.n_converged == int(m.converged.sum())
        assert row.test_error_mean == pytest.approx(m.test_error.mean())
        members = m[m.converged] if m.converged.any() else None
        if members is None:
            assert np.isnan(row.ens_test_error)
            continue
        f = logits[logits.run_id.isin(members.run_id)].merge(
            members[["run_id", "steps"]], on="run_id"
        )
        f = f[f.step == f.steps].groupby("sample").agg(f=("f", "mean"), label=("label", "first"))
        assert row.ens_test_error == pytest.approx(np.mean(f.label * f.f <= 0))
    summary = sw.summary()
    jammed = curves[curves.n_converged == curves.n_seeds]
    assert summary.n_star["fc3"] == (int(jammed.n_params.min()) if len(jammed) else None)


def test_status_json_and_ls(finished):
    root, _, _ = finished
    proc = jamsweep("status", "tiny", "--json", "--results", str(root / "res"))
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["sweep"] == "tiny" and st["counts"]["done"] == 4 and st["counts"]["failed"] == 0
    assert {r["state"] for r in st["runs"]} == {"done"} and all(
        r["attempts"] == 1 for r in st["runs"]
    )
    ls = jamsweep("ls", "--results", str(root / "res"))
    assert ls.returncode == 0 and re.search(r"tiny: pending 0 +running 0 +done 4", ls.stdout)


def run_file(sweep, table: str, **key):  # noqa: ANN001, ANN201  (Paths)
    """The file of the one run of the manifest with these column values (layout 2)."""
    manifest = pd.read_parquet(sweep / "manifest.parquet")
    for name, value in key.items():
        manifest = manifest[manifest[name] == value]
    (run_id,) = manifest["run_id"]
    return sweep / table / f"{run_id}.parquet"


def test_resubmitting_runs_only_what_is_missing(finished):
    root, grid, _ = finished
    sweep = root / "res" / "tiny"
    victim = run_file(sweep, "metrics", width=6, seed=1)
    keep = run_file(sweep, "metrics", width=6, seed=0)
    before = keep.stat().st_mtime_ns
    victim.unlink()  # as if that run had been interrupted before it finished
    proc = jamsweep("submit", str(grid), "--results", str(root / "res"), "--num-cpus", "2")
    assert proc.returncode == 0, proc.stderr
    assert "3 already done, 1 to run" in proc.stderr
    assert "[4/4] done      fc3 h=6 seed=1" in proc.stderr
    assert victim.exists() and keep.stat().st_mtime_ns == before
    logits = pd.read_parquet(sweep / "logits")
    assert len(logits) == 4 * 160  # nothing duplicated


def test_status_of_unknown_sweep_is_a_clear_error(finished):
    root, _, _ = finished
    proc = jamsweep("status", "nope", "--results", str(root / "res"))
    assert proc.returncode != 0
    assert (
        "no sweep 'nope'" in proc.stderr
        and "tiny" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_malformed_grid_names_the_field_and_writes_nothing(tmp_path):
    grid = write_grid(
        tmp_path / "bad.yaml", TINY.replace("widths: [1.5, 6]", "widths: [0, 6]") + "colour: red\n"
    )
    proc = jamsweep("submit", str(grid), "--results", str(tmp_path / "res"))
    assert proc.returncode != 0
    assert "architectures.0.widths" in proc.stderr and "colour: unknown field" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "res").exists()


def test_a_diverging_run_fails_at_once_without_retries_and_is_named(tmp_path):
    bad = TINY.replace("widths: [1.5, 6]", "widths: [6]").replace("seeds: 2", "seeds: 1")
    bad = bad.replace("lr_max: 0.01", "lr0: 1.0e+200, lr_max: 1.0e+200").replace(
        "max_retries: 1", "max_retries: 2"
    )
    grid = write_grid(tmp_path / "nan.yaml", bad)
    proc = jamsweep("submit", str(grid), "--results", str(tmp_path / "res"), "--num-cpus", "1")
    assert proc.returncode == 1
    assert re.search(
        r"failed: fc3 width=6 seed=0 \(\w+\): FloatingPointError: loss is (nan|inf)", proc.stderr
    )
    st = json.loads(jamsweep("status", "tiny", "--json", "--results", str(tmp_path / "res")).stdout)
    (run,) = st["runs"]
    # deterministic: a retry would diverge again, so there is none (max_retries is for
    # dead workers and nodes, and I/O errors)
    assert run["state"] == "failed" and run["attempts"] == 1 and "diverged" in run["error"]


def test_embedded_ray_listens_on_loopback_only():
    from orchestrator.cluster.backend import RayBackend

    with RayBackend(None, num_cpus=1):
        ours = _descendants(os.getpid())
        listening = subprocess.run(
            ["ss", "-ltnpH"], capture_output=True, text=True, check=True
        ).stdout
    mine = [line for line in listening.splitlines() if any(f"pid={p}," in line for p in ours)]
    assert mine, "found no listening socket of the embedded Ray"
    for line in mine:
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:")), line


def test_refine_runs_new_widths_inside_the_bracket_and_a_resubmission_keeps_them(finished):
    root, grid, _ = finished  # runs last in this module: it adds runs to the tiny sweep
    results = str(root / "res")
    summary = json.loads((root / "res" / "tiny" / "summary.json").read_text())
    bracket = summary["n_star_bracket"]["fc3"]
    if bracket is None:
        pytest.skip(f"this tiny sweep has no N* bracket: {summary['n_star']}")
    proc = jamsweep(
        "refine", "tiny", "--n-widths", "1", "--seeds", "1", "--num-cpus", "2", "--results", results
    )
    assert proc.returncode == 0, proc.stderr
    metrics = pd.read_parquet(root / "res" / "tiny" / "metrics")
    new = sorted(set(metrics.width.astype(float)) - {1.5, 6.0})
    assert len(new) == 1 and bracket[0] < new[0] < bracket[1]
    again = jamsweep("submit", str(grid), "--results", results, "--num-cpus", "2")
    assert again.returncode == 0, again.stderr
    assert "all 5 runs already done" in again.stderr
