"""Packs end to end through the CLI on a real embedded Ray (2 CPUs): `resources.pack`."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from schemas.grid import load_grid
from tests.conftest import jamsweep, write_grid
from workers.data import load_dataset
from workers.train import measurement_steps
from workers.trainer import train

pytestmark = pytest.mark.ray

PACKED = """
sweep: packed
dataset: {name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 10}
architectures:
  - {name: fc3, depth: 3, widths: [3, 6]}
seeds: 3
training: {lr_max: 0.01, max_steps: 600}
resources: {num_cpus: 1, max_retries: 1, pack: auto}
"""


def test_a_packed_sweep_reports_and_writes_every_run_as_if_alone(tmp_path):
    grid = write_grid(tmp_path / "packed.yaml", PACKED)
    proc = jamsweep("submit", str(grid), "--results", str(tmp_path / "res"), "--num-cpus", "2")
    assert proc.returncode == 0, proc.stderr
    assert "[6/6] done" in proc.stderr and "Traceback" not in proc.stderr
    status = json.loads(
        jamsweep("status", "packed", "--json", "--results", str(tmp_path / "res")).stdout
    )
    assert {k: n for k, n in status["counts"].items() if n} == {"done": 6}
    assert all(r["node"] and r["attempts"] == 1 for r in status["runs"])  # started per run
    metrics = pd.read_parquet(tmp_path / "res" / "packed" / "metrics")
    assert len(metrics) == 6 and metrics["run_id"].is_unique
    specs = {s.run_id: s for s in load_grid(grid)[0].expand()}
    checks = sorted(measurement_steps(600))
    torch.set_num_threads(1)
    data = load_dataset(next(iter(specs.values())).dataset)
    for row in metrics.itertuples():
        alone = train(specs[row.run_id], data).metrics
        assert row.converged == alone["converged"]
        assert abs(checks.index(row.steps) - checks.index(alone["steps"])) <= 1
        assert row.test_error == pytest.approx(alone["test_error"], abs=0.011)
    logits = pd.read_parquet(tmp_path / "res" / "packed" / "logits")
    assert logits.groupby("run_id").size().to_dict() == {r: 160 for r in specs}
