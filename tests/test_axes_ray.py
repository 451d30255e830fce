"""Sweep axes end to end on a real Ray: a grid with a list of train_size trains the
product, its files carry typed point columns, it grows and shrinks along the axis without
retraining, and status, show and refine work per point."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import RayHead, jamsweep, write_grid

pytestmark = pytest.mark.ray

GRID = """
sweep: line
dataset: {{name: digits_parity_pca, train_size: {p}, test_size: 100}}
architectures: [{{name: fc, depth: 3, widths: [1, 16]}}]
seeds: 2
training: {{lr0: 0.02, lr_exponent: 0, lr_max: 0.01, max_steps: 600}}
resources: {{num_cpus: 1, max_retries: 0}}
"""


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    cluster = RayHead(num_cpus=2, log=tmp_path_factory.mktemp("head") / "head.log")
    yield cluster
    cluster.kill()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, head):
    root = tmp_path_factory.mktemp("axes")
    grid = write_grid(root / "line.yaml", GRID.format(p="[40, 80]"))
    res = root / "res"
    proc = jamsweep("submit", str(grid), "--results", str(res), "--address", head.gcs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, grid, res, proc


def test_the_product_runs_and_every_file_has_its_point(sweep):
    _, _, res, proc = sweep
    assert "8 runs, 0 already done, 8 to run" in proc.stderr
    assert "done      fc train_size=80 h=16 seed=1" in proc.stderr  # each line names its point
    manifest = pd.read_parquet(res / "line" / "manifest.parquet")
    assert manifest["train_size"].dtype == "int64"
    assert sorted(manifest.groupby("train_size").size().items()) == [(40, 4), (80, 4)]
    metrics = pd.read_parquet(res / "line" / "metrics")  # a plain read: typed columns
    assert metrics["width"].dtype == "float64" and metrics["train_size"].dtype == "int64"
    joined = metrics.merge(manifest[["run_id", "train_size", "width"]], on="run_id")
    assert (joined["train_size_x"] == joined["train_size_y"]).all()
    assert (joined["width_x"] == joined["width_y"]).all()
    from orchestrator.results import open_sweep

    at_40 = open_sweep(str(res / "line")).metrics(train_size=40)  # a point, pushed down
    assert len(at_40) == 4 and set(at_40["train_size"]) == {40}
    logits = pd.read_parquet(res / "line" / "logits")
    per_run = logits[logits.split == "train"].groupby("run_id")["sample"].nunique()
    p_of = dict(zip(manifest.run_id, manifest.train_size, strict=True))
    assert all(n == p_of[run] for run, n in per_run.items())  # each run trained on its P


def test_curves_and_n_star_are_per_point(sweep):
    _, _, res, _ = sweep
    curves = pd.read_parquet(res / "line" / "curves.parquet")
    assert set(curves["point"]) == {"train_size=40", "train_size=80"}
    assert curves["train_size"].dtype == "int64" and len(curves) == 4
    summary = json.loads((res / "line" / "summary.json").read_text())
    assert set(summary["n_star"]) == {"fc train_size=40", "fc train_size=80"}
    for p in (40, 80):  # N* by hand: the smallest N from which every run converged
        metrics = pd.read_parquet(res / "line" / "metrics")
        at = metrics[metrics.train_size == p].groupby("n_params")["converged"].all()
        jammed = [n for n in at.index if at.loc[at.index >= n].all()]
        assert summary["n_star"][f"fc train_size={p}"] == (min(jammed) if jammed else None)


def test_kept_nets_are_measured_per_point_each_on_its_own_data(sweep):
    from orchestrator.results import open_sweep
    from orchestrator.results.boundaries import boundary_tables
    from schemas.errors import JamsweepError
    from schemas.layout import SweepLayout

    _, _, res, _ = sweep
    _, distances = boundary_tables(SweepLayout(str(res), "line"))
    # a series per point: the two seeds of one (P, width), never the nets of two P's
    assert sorted(zip(distances.arch, distances.width, strict=True)) == [
        (f"fc train_size={p}", w) for p in (40, 80) for w in (1.0, 16.0)
    ]
    assert (distances.n_nets == 2).all()
    opened = open_sweep(str(res / "line"))
    with pytest.raises(JamsweepError, match="differ in their data"):
        opened.inputs(split="train")
    manifest = opened.manifest()
    for p in (40, 80):
        run = manifest[manifest.train_size == p].run_id.iloc[0]
        assert len(opened.inputs(split="train", run_id=run)) == p


def test_status_where_and_show_per_point(sweep):
    _, _, res, _ = sweep
    proc = jamsweep("status", "line", "--results", str(res), "--where", "train_size=80")
    assert proc.returncode == 0 and "done 4" in proc.stdout and "(4 runs" in proc.stdout
    both = jamsweep("status", "line", "--results", str(res), "--where", "train_size=40,80")
    assert "(8 runs" in both.stdout
    one = jamsweep(
        "status", "line", "--results", str(res), "--where", "train_size=80", "--where", "width=16"
    )
    assert "(2 runs" in one.stdout
    bad = jamsweep("status", "line", "--results", str(res), "--where", "train_size=50")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "train_size values: 40, 80" in bad.stderr
    show = jamsweep("show", "line", "--results", str(res))
    assert show.returncode == 0
    assert "fc train_size=40: N* =" in show.stdout and "fc train_size=80: N* =" in show.stdout
    # every listing of runs names each run's point: the table, its JSON, one run's header
    table = jamsweep("status", "line", "--results", str(res)).stdout
    assert "point" in table and table.count("train_size=40") == 4, table
    answer = json.loads(jamsweep("status", "line", "--results", str(res), "--json").stdout)
    manifest = pd.read_parquet(res / "line" / "manifest.parquet")
    p_of = dict(zip(manifest.run_id, manifest.train_size, strict=True))
    assert all(r["point"] == f"train_size={p_of[r['run_id']]}" for r in answer["runs"])
    run = manifest.run_id[manifest.train_size == 80].iloc[0]
    header = jamsweep("status", "line", "--results", str(res), "--run", run).stdout
    assert header.startswith(f"run {run}: fc train_size=80 width="), header


def test_growing_and_shrinking_along_the_axis(sweep, head):
    root, grid, res, _ = sweep
    metrics = res / "line" / "metrics"
    before = {p.name: p.stat().st_mtime_ns for p in metrics.iterdir()}
    grid.write_text(GRID.format(p="[40, 80, 120]"))
    grown = jamsweep("submit", str(grid), "--results", str(res), "--address", head.gcs)
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert "12 runs, 8 already done, 4 to run" in grown.stderr
    assert all(metrics.joinpath(n).stat().st_mtime_ns == t for n, t in before.items())
    assert len(list(metrics.iterdir())) == 12
    grid.write_text(GRID.format(p="[80, 120]"))
    shrunk = jamsweep("submit", str(grid), "--results", str(res), "--address", head.gcs)
    assert shrunk.returncode == 0, shrunk.stderr[-3000:]
    assert "8 runs, 8 already done, 0 to run" in shrunk.stderr or "all 8 runs already done" in (
        shrunk.stderr
    )
    assert "4 run(s) the grid no longer names" in shrunk.stderr
    assert len(list(metrics.iterdir())) == 12  # the files of P = 40 stay
    manifest = pd.read_parquet(res / "line" / "manifest.parquet")
    assert sorted(set(manifest["train_size"])) == [80, 120]
    curves = pd.read_parquet(res / "line" / "curves.parquet")
    assert set(curves["train_size"]) == {80, 120}


def test_refine_brackets_n_star_per_point(sweep, head):
    """After the growth test: points 80 and 120. Each bracketed point gets one new width
    (two seeds) inside its own bracket, trained at its own P."""
    _, _, res, _ = sweep
    summary = json.loads((res / "line" / "summary.json").read_text())
    bracketed = {k: v for k, v in summary["n_star_bracket"].items() if v is not None}
    args = ("refine", "line", "--results", str(res), "--address", head.gcs)
    assert len(bracketed) == 2, summary["n_star_bracket"]  # h=1 never jams, h=16 does
    proc = jamsweep(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, (lo, hi) in bracketed.items():
        assert f"{name}: N* between h={lo:g} and h={hi:g}" in proc.stderr
    manifest = pd.read_parquet(res / "line" / "manifest.parquet")
    added = manifest[manifest.origin == "refine"]
    assert len(added) == 2 * len(bracketed)
    for name, (lo, hi) in bracketed.items():
        p = int(name.removeprefix("fc train_size="))
        mine = added[added.train_size == p]
        assert len(mine) == 2 and ((mine.width > lo) & (mine.width < hi)).all()
    metrics = pd.read_parquet(res / "line" / "metrics")
    assert set(added.run_id) <= set(metrics.run_id)  # they trained
    assert metrics["width"].dtype == "float64"  # fractional widths keep the type


def test_lists_of_train_size_and_lr_max_through_the_jobs_api(tmp_path, head):
    """The issue's grid: train_size and training.lr_max as lists, submitted as a Ray job
    (its driver runs on the cluster), under a --max-runs that just fits."""
    text = GRID.format(p="[40, 80]").replace("widths: [1, 16]", "widths: [16]")
    text = text.replace("lr_max: 0.01", "lr_max: [0.01, 0.02]").replace(
        "sweep: line", "sweep: jobs"
    )
    grid = write_grid(tmp_path / "jobs.yaml", text)
    res = str(tmp_path / "res")
    args = ("submit", str(grid), "--address", head.dashboard, "--results", res, "--shared-fs")
    refused = jamsweep(*args, "--max-runs", "7")
    assert refused.returncode == 1 and "makes 8 runs" in refused.stderr
    proc = jamsweep(*args, "--max-runs", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SUCCEEDED" in proc.stdout, proc.stdout
    curves = pd.read_parquet(tmp_path / "res" / "jobs" / "curves.parquet")
    assert sorted(zip(curves.train_size, curves.lr_max, strict=True)) == [
        (40, 0.01),
        (40, 0.02),
        (80, 0.01),
        (80, 0.02),
    ]
    summary = json.loads((tmp_path / "res" / "jobs" / "summary.json").read_text())
    assert set(summary["n_star"]) == {
        f"fc train_size={p} lr_max={lr}" for p in (40, 80) for lr in (0.01, 0.02)
    }
    # --where through the Jobs API: selected on the cluster, where the manifest is
    shown = jamsweep(
        "status", "jobs", "--address", head.dashboard, "--results", res,
        "--where", "lr_max=0.02", "--where", "train_size=80", "--json",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    answer = json.loads(shown.stdout[shown.stdout.find("{") :])
    assert answer["counts"]["done"] == 2 and len(answer["runs"]) == 2, answer
