"""examples/breast_cancer.yaml, the user-data sweep: it validates as written (every run with
its N, read from the table), and a tiny version of it (2 widths x 2 seeds, 300 steps) runs
end to end on a real embedded Ray, through the CLI as a user runs it: the manifest and
`show` say how the labels were mapped, the curves are written, and the inputs read back are
the preprocessed table (P = 300 and 124 test rows, each of norm sqrt(30))."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from orchestrator.results import open_sweep
from tests.conftest import ROOT, jamsweep

pytestmark = pytest.mark.ray

EXAMPLE = ROOT / "examples" / "breast_cancer.yaml"
TABLE = ROOT / "examples" / "data" / "breast_cancer.parquet"
LABELS = '"benign" -> -1, "malignant" -> +1'


def test_the_table_is_scikit_learns_breast_cancer():
    from sklearn.datasets import load_breast_cancer

    bundled, table = load_breast_cancer(), pd.read_parquet(TABLE)
    np.testing.assert_array_equal(table[bundled.feature_names].to_numpy(), bundled.data)
    assert table["diagnosis"].tolist() == list(bundled.target_names[bundled.target])


def test_the_example_validates_with_every_runs_n():
    proc = jamsweep("submit", str(EXAMPLE), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "24 runs, 0 done, 24 would run" in proc.stdout
    # depth 3, d = 30 features, one output: N = 30 h + 2 h^2 + h at h = 2 and at h = 16
    assert "h=2  seed=0  N=70" in proc.stdout and "h=16  seed=2  N=1008" in proc.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bc")
    grid = yaml.safe_load(EXAMPLE.read_text())
    grid["dataset"]["train"] = str(TABLE)
    grid["architectures"][0]["widths"] = [2, 8]
    grid["seeds"] = 2
    grid["training"]["max_steps"] = 300
    (root / "bc.yaml").write_text(yaml.safe_dump(grid))
    start = time.monotonic()
    proc = jamsweep(
        "submit", str(root / "bc.yaml"), "--results", str(root / "res"), "--num-cpus", "2"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"tiny breast_cancer sweep: {time.monotonic() - start:.0f} s")
    return root / "res" / "breast_cancer"


def test_the_tiny_sweep_ran_and_was_reduced(tiny):
    sweep = open_sweep(tiny)
    curves = sweep.curves()
    assert sorted(curves["width"]) == [2.0, 8.0] and (curves["n_seeds"] == 2).all()
    assert sorted(curves["n_params"]) == [70, 376]
    assert set(sweep.manifest()["label_map"]) == {LABELS}
    train = sweep.logits(split="train", step="final", width=2, seed=0)
    assert len(train) == 300 and sorted(set(train["label"])) == [-1, 1]


def test_show_prints_the_label_mapping(tiny):
    proc = jamsweep("show", str(tiny))
    assert proc.returncode == 0, proc.stderr
    assert f"labels: {LABELS}; 569 rows; 30 feature columns -> d = 30" in proc.stdout
    assert "label_noise 0.1: 30 of the 300 training labels replaced" in proc.stdout


def test_inputs_are_the_preprocessed_table(tiny):
    sweep = open_sweep(tiny)
    x = sweep.inputs(split="test")
    assert x.shape == (124, 30) and x.dtype == torch.float64
    torch.testing.assert_close(x.norm(dim=1), torch.full((124,), math.sqrt(30.0), dtype=x.dtype))
    test = sweep.logits(split="test", step="final", width=8, seed=1).sort_values("sample")
    table = pd.read_parquet(TABLE)
    raw = table.drop(columns="diagnosis").to_numpy()
    train_rows = np.sort(sweep.logits(split="train", step="final", width=8, seed=1)["sample"])
    mean, std = raw[train_rows].mean(axis=0), raw[train_rows].std(axis=0)
    z = (raw[test["sample"]] - mean) / std
    np.testing.assert_allclose(x.numpy(), z * math.sqrt(30) / np.linalg.norm(z, axis=1)[:, None])
