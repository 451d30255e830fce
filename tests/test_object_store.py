"""Results on an object store: the whole path (submit, status, reduce, open_sweep,
resubmission, growth, --force) against a real S3 server on loopback (moto's threaded
server), through pyarrow's S3 filesystem with the endpoint from AWS_ENDPOINT_URL."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from schemas.grid import parse_grid
from tests.conftest import JAMSWEEP, ROOT, jamsweep, write_grid
from tests.test_faults import wait_for

pytestmark = pytest.mark.ray

GRID = """
sweep: cloud
dataset: {name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 10}
architectures:
  - {name: fc3, depth: 3, widths: [WIDTHS]}
seeds: 2
training: {lr_max: 0.01, max_steps: 300}
resources: {num_cpus: 1}
"""


def keys(client, prefix: str) -> set[str]:  # noqa: ANN001
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="sweeps", Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_a_sweep_on_s3_submits_reduces_reads_and_resumes(tmp_path, s3):
    results = "s3://sweeps/lab"
    grid = write_grid(tmp_path / "g.yaml", GRID.replace("WIDTHS", "4, 8"))
    first = jamsweep("submit", str(grid), "--results", results, "--num-cpus", "2")
    assert first.returncode == 0, first.stderr
    stored = keys(s3, "lab/cloud/")
    for name in ("grid.yaml", "manifest.parquet", "status.parquet", "curves.parquet"):
        assert f"lab/cloud/{name}" in stored
    assert sum(k.startswith("lab/cloud/metrics/") and k.endswith(".parquet") for k in stored) == 4
    assert not any(k.startswith("lab/cloud/checkpoints/") for k in stored)
    assert not (tmp_path / "lab").exists() and not os.path.exists("s3:")  # nothing local

    st = json.loads(jamsweep("status", "cloud", "--results", results, "--json").stdout)
    assert st["counts"]["done"] == 4 and st["alive"] is False
    assert jamsweep("ls", "--results", results).stdout.startswith("cloud: pending 0")
    reduced = jamsweep("reduce", "cloud", "--results", results, "--no-figures")
    assert reduced.returncode == 0, reduced.stderr

    from orchestrator.results import open_sweep

    sweep = open_sweep(f"{results}/cloud")
    metrics = sweep.metrics()
    assert len(metrics) == 4 and sorted(set(metrics.width)) == [4.0, 8.0]
    assert len(sweep.logits(split="test")) == 4 * 100
    assert sorted(sweep.curves().width) == [4.0, 8.0]

    again = jamsweep("submit", str(grid), "--results", results, "--num-cpus", "2")
    assert again.returncode == 0 and "all 4 runs already done" in again.stderr, again.stderr
    grown = write_grid(tmp_path / "g.yaml", GRID.replace("WIDTHS", "4, 8, 12"))
    more = jamsweep("submit", str(grown), "--results", results, "--num-cpus", "2")
    assert more.returncode == 0 and "6 runs, 4 already done, 2 to run" in more.stderr
    assert sorted(open_sweep(f"{results}/cloud").curves().width) == [4.0, 8.0, 12.0]

    other = write_grid(tmp_path / "o.yaml", GRID.replace("WIDTHS", "4").replace("0.01", "0.02"))
    refused = jamsweep("submit", str(other), "--results", results, "--num-cpus", "2")
    assert refused.returncode == 1 and "training.lr_max: 0.01 -> 0.02" in refused.stderr
    forced = jamsweep("submit", str(other), "--results", results, "--num-cpus", "2", "--force")
    assert forced.returncode == 0, forced.stderr
    moved = {k.split("/")[1] for k in keys(s3, "lab/")}
    assert "cloud" in moved and any(m.startswith("cloud.replaced-") for m in moved)
    assert len(open_sweep(f"{results}/cloud").metrics()) == 2


JAMMED = """
sweep: jam
dataset: {name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 10}
architectures:
  - {name: fc3, depth: 3, widths: [1, 12]}
seeds: 1
training: {lr0: 1.0e-6, lr_exponent: 6.0, lr_max: 0.05, max_steps: 40000}
resources: {num_cpus: 1}
checkpoint: {every_steps: 100}
"""
# lr = min(1e-6 h^6, 0.05): h = 1 trains at 1e-6 and cannot fit the 60 points within the
# budget (40,000 steps, tens of seconds: it is still training when the driver is killed),
# h = 12 at 0.05 fits them in a few hundred steps: N* is bracketed by construction.


def test_on_s3_a_killed_sweep_resumes_from_its_checkpoints_and_is_shown_plotted_refined(
    tmp_path, s3
):
    results = "s3://sweeps/lab2"
    grid = write_grid(tmp_path / "g.yaml", JAMMED)
    env = {**os.environ, "JAMSWEEP_LEASE_S": "4"}
    driver = subprocess.Popen(
        [*JAMSWEEP, "submit", str(grid), "--results", results, "--num-cpus", "2"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    narrow = next(r.run_id for r in parse_grid(JAMMED).expand() if r.width == 1)
    wait_for(  # the run to resume is h = 1's: the wait is for its own checkpoint
        lambda: f"lab2/jam/checkpoints/{narrow}.pt" in keys(s3, "lab2/jam/checkpoints/"),
        180,
        "the h = 1 run's checkpoint on S3",
    )
    driver.kill()  # SIGKILL: the driver's embedded Ray goes with it
    driver.wait()
    from orchestrator.cluster.lease import is_held
    from schemas.layout import SweepLayout

    wait_for(lambda: not is_held(SweepLayout(results, "jam")), 15, "its lease (on S3) to expire")
    again = subprocess.run(
        [*JAMSWEEP, "submit", str(grid), "--results", results, "--num-cpus", "2"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    from orchestrator.results import open_sweep

    sweep = open_sweep(f"{results}/jam")
    metrics = sweep.metrics().set_index("width")
    assert metrics.loc[1.0, "resumed_from"] > 0  # resumed from its checkpoint on S3
    assert not metrics.loc[1.0, "converged"] and metrics.loc[12.0, "converged"]
    checkpoints = [k for k in keys(s3, "lab2/jam/checkpoints/") if k.endswith(".pt")]
    assert not checkpoints  # removed once the results landed

    shown = jamsweep("show", f"{results}/jam")
    assert shown.returncode == 0 and "N* =" in shown.stdout, shown.stderr
    plotted = jamsweep("plot", f"{results}/jam", "--format", "svg")
    assert plotted.returncode == 0, plotted.stderr
    assert any(k.endswith(".svg") for k in keys(s3, "lab2/jam/figures/"))
    assert jamsweep("report", f"{results}/jam").returncode == 0
    assert "lab2/jam/report.html" in keys(s3, "lab2/jam/")

    refined = jamsweep("refine", f"{results}/jam", "--n-widths", "1", "--num-cpus", "2")
    assert refined.returncode == 0, refined.stderr[-2000:]
    widths = sorted(open_sweep(f"{results}/jam").curves().width)
    assert len(widths) == 3 and 1.0 < widths[1] < 12.0  # a width inside the bracket, trained
