"""A files sweep trained run by run in this process (workers.execute, no Ray) and read back:
the manifest knows N and the label mapping before training, the workers train on the files
through the loader seam (binary: one output; three classes: three), the reducer and `show`
work on it unchanged, and `open_sweep(...).inputs()` is exactly the rows the logits index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestrator import sweep as api
from orchestrator.cli.overview import overview
from orchestrator.results import open_sweep
from orchestrator.results.store import check_grid_change, manifest_table
from schemas.errors import JamsweepError
from schemas.grid import load_grid
from schemas.layout import SweepLayout
from workers import io
from workers.data import check_dataset
from workers.execute import execute

GRID = """
sweep: mine
dataset:
  name: files
  train: pool.parquet
  label: kind
  train_size: 40
  standardize: false
  rescale: false
architectures: [{name: fc2, depth: 2, widths: [2, 6]}]
seeds: 2
training: {lr_max: 0.01, max_steps: 60, loss: hinge}
"""


def pool(labels: list[str], n: int = 90) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=["u", "v", "w"])
    frame["kind"] = [labels[i % len(labels)] for i in range(n)]
    return frame


def run_sweep(folder, labels: list[str]) -> tuple[SweepLayout, pd.DataFrame]:
    """What `submit` does, without Ray: check and resolve the data, write grid.yaml and the
    manifest, execute every run, reduce."""
    frame = pool(labels)
    frame.to_parquet(folder / "pool.parquet")
    (folder / "g.yaml").write_text(GRID)
    spec, text = load_grid(folder / "g.yaml")
    spec = spec.with_data(check_dataset(spec.dataset))
    layout = SweepLayout(str(folder / "results"), spec.sweep)
    runs = spec.expand()
    io.write_text(layout.grid_yaml, text)
    io.write_table(layout.manifest, manifest_table(runs))
    for run in runs:
        execute(run, layout)
    api.reduce(spec.sweep, results=layout.results, figures=False)
    return layout, frame


@pytest.fixture(scope="module")
def binary(tmp_path_factory, one_torch_thread):
    return run_sweep(tmp_path_factory.mktemp("binary"), ["sick", "well"])


def test_the_manifest_says_n_and_the_label_mapping(binary):
    layout, _ = binary
    manifest = open_sweep(layout.root).manifest()
    assert set(manifest["label_map"]) == {'"sick" -> -1, "well" -> +1'}
    # d_in 3, hidden [2, 2] or [6, 6], one output: weights only
    assert sorted(set(manifest["n_params"])) == [3 * 2 + 2 * 2 + 2, 3 * 6 + 6 * 6 + 6]
    assert 'labels: "sick" -> -1, "well" -> +1' in (
        overview("mine", results=layout.results).data or ""
    )


def test_logits_index_the_files_rows_and_inputs_are_those_rows(binary):
    layout, frame = binary
    sweep = open_sweep(layout.root)
    test = sweep.logits(split="test", step="final", width=6, seed=0).sort_values("sample")
    x = sweep.inputs(split="test")  # no preprocessing in this grid: the file's values
    np.testing.assert_array_equal(x.numpy(), frame[["u", "v", "w"]].to_numpy()[test["sample"]])
    want = np.where(frame["kind"].to_numpy()[test["sample"]] == "well", 1, -1)
    np.testing.assert_array_equal(test["label"].to_numpy(), want)
    train = sweep.logits(split="train", step="final", width=6, seed=0)
    assert len(train) == 40 and len(x) == 90 - 40
    assert sweep.inputs(split="train").shape == (40, 3)


def test_the_reducer_works_on_it_unchanged(binary):
    layout, _ = binary
    sweep = open_sweep(layout.root)
    curves = sweep.curves()
    metrics = sweep.metrics()
    assert sorted(curves["width"]) == [2.0, 6.0]
    mean = metrics.groupby("width")["test_error"].mean()
    np.testing.assert_allclose(curves.set_index("width")["test_error_mean"], mean.loc[[2.0, 6.0]])


def test_three_classes_train_three_outputs(tmp_path, one_torch_thread):
    layout, frame = run_sweep(tmp_path, ["a", "b", "c"])
    sweep = open_sweep(layout.root)
    assert set(sweep.manifest()["label_map"]) == {'"a" -> 0, "b" -> 1, "c" -> 2'}
    test = sweep.logits(split="test", step="final", width=2, seed=1)
    assert {len(f) for f in test["f"]} == {3}
    classes = {"a": 0, "b": 1, "c": 2}
    assert test["label"].tolist() == [classes[k] for k in frame["kind"].to_numpy()[test["sample"]]]
    errors = np.mean([np.argmax(f) != y for f, y in zip(test["f"], test["label"], strict=True)])
    metrics = sweep.metrics(width=2, seed=1)
    assert metrics["test_error"].iloc[0] == pytest.approx(errors)


def test_new_values_in_the_same_file_are_a_changed_grid(binary, tmp_path):
    layout, frame = binary
    folder = tmp_path
    changed = frame.copy()
    changed.loc[0, "u"] += 1.0
    changed.to_parquet(folder / "pool.parquet")
    (folder / "g.yaml").write_text(GRID)
    spec, _ = load_grid(folder / "g.yaml")
    spec = spec.with_data(check_dataset(spec.dataset))
    with pytest.raises(JamsweepError, match="the values read from .*pool.parquet .*fingerprint"):
        check_grid_change(layout, spec, force=False)
    frame.to_parquet(folder / "pool.parquet")  # the same values elsewhere: the same sweep
    same, _ = load_grid(folder / "g.yaml")
    assert not check_grid_change(layout, same.with_data(check_dataset(same.dataset)), False)


def test_refine_on_a_manifest_older_than_label_map_fills_it_in(tmp_path):
    from sweepfiles import write_sweep

    from orchestrator.cluster.refine import refined_specs
    from orchestrator.results.store import add_to_manifest

    files = write_sweep(str(tmp_path), seeds=1, widths=[2, 4])
    old = io.read_table(files.layout.manifest).drop_columns(["label_map"])
    io.write_table(files.layout.manifest, old)
    added = add_to_manifest(files.layout, refined_specs(files.specs[0], [3.0], [0]))
    manifest = open_sweep(files.layout.root).manifest()
    assert len(added) == 1 and len(manifest) == 3
    assert set(manifest["label_map"]) == {"even digit -> -1, odd digit -> +1"}
