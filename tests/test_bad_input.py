"""Bad input: one clear message naming the problem, exit code != 0, no traceback, nothing
written or lost. Each case runs the CLI in a fresh process, as a user would."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from orchestrator.results.store import finished_and_broken, finished_run_ids
from schemas.grid import parse_grid
from schemas.layout import SweepLayout
from tests.conftest import jamsweep, write_grid
from workers import io

GOOD = """
sweep: bad
dataset: {name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 10}
architectures:
  - {name: fc3, depth: 3, widths: [2, 6]}
seeds: 2
training: {lr_max: 0.01, max_steps: 50}
"""


def fails_cleanly(proc, *needles: str) -> None:
    assert proc.returncode not in (0, None), proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("grid", "needles"),
    [
        ("sweep: bad\ndataset: {name: [\n", ["not valid YAML at line"]),
        (GOOD + "epochs: 3\n", ["epochs: unknown field"]),
        (GOOD.replace("seeds: 2", "seeds: two"), ["seeds"]),
        (GOOD.replace("[2, 6]", "[0, 6]"), ["architectures.0.widths", ">= 1"]),
        (
            GOOD.replace("max_steps: 50", "max_steps: 50, margin: -1"),
            ["training.margin", "greater than or equal to 0"],
        ),
        (GOOD.replace("train_size: 60", "train_size: 5000"), ["dataset.train_size = 5000"]),
        (
            GOOD.replace("digits_parity_pca", "mnist_parity_pca, root: nowhere"),
            ["dataset.root", "nowhere", "not a readable folder"],
        ),
        (GOOD.replace("digits_parity_pca", "imagenet"), ["dataset.name"]),
    ],
)
def test_bad_grids_write_nothing(tmp_path, grid, needles):
    path = write_grid(tmp_path / "g.yaml", grid)
    fails_cleanly(jamsweep("submit", str(path), "--results", str(tmp_path / "res")), *needles)
    assert not (tmp_path / "res").exists()


def test_unwritable_results_location(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = write_grid(tmp_path / "g.yaml", GOOD)
    fails_cleanly(
        jamsweep("submit", str(path), "--results", str(blocker / "res")), "cannot write results"
    )


@pytest.mark.parametrize("address", ["http://127.0.0.1:9", "ray://127.0.0.1:9"])
def test_unreachable_cluster(tmp_path, address, monkeypatch):
    monkeypatch.setenv("RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S", "1")  # ray:// backs off 1+2+4 s
    path = write_grid(tmp_path / "g.yaml", GOOD)
    res = str(tmp_path / "res")
    shared = ["--shared-fs"] if address.startswith("http") else []  # a Jobs address's paths
    proc = jamsweep(
        "submit", str(path), "--results", res, "--address", address, *shared, timeout=180
    )
    fails_cleanly(proc, "127.0.0.1:9")
    assert "cannot reach" in proc.stderr
    assert not (tmp_path / "res" / "bad").exists()


def test_unknown_sweep_for_status_and_reduce(tmp_path):
    for cmd in ("status", "reduce"):
        fails_cleanly(jamsweep(cmd, "ghost", "--results", str(tmp_path)), "no sweep 'ghost'")


def test_a_sweep_name_used_by_another_grid_is_refused_and_nothing_changes(tmp_path):
    res = tmp_path / "res" / "bad"
    res.mkdir(parents=True)
    (res / "grid.yaml").write_text(GOOD)
    marker = res / "metrics" / "keep.parquet"
    marker.parent.mkdir()
    marker.write_bytes(b"x")
    other = write_grid(tmp_path / "g.yaml", GOOD.replace("max_steps: 50", "max_steps: 60"))
    fails_cleanly(
        jamsweep("submit", str(other), "--results", str(tmp_path / "res")),
        "differs in what decides the runs' results",
        "training.max_steps: 50 -> 60",
        "--force",
    )
    assert (res / "grid.yaml").read_text() == GOOD and marker.exists()


def test_same_grid_with_other_resources_is_the_same_sweep(tmp_path):
    res = tmp_path / "res" / "bad"
    res.mkdir(parents=True)
    (res / "grid.yaml").write_text(GOOD)
    same = write_grid(tmp_path / "g.yaml", GOOD + "resources: {max_retries: 7}\n")
    proc = jamsweep("submit", str(same), "--results", str(tmp_path / "res"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "4 would run" in proc.stdout


def land(layout: SweepLayout, run, metrics_run_id: str | None = None) -> None:  # noqa: ANN001
    """A run's three result files, as small whole Parquet files."""
    io.write_table(layout.logits(*run.key), pa.table({"run_id": [run.run_id]}))
    io.write_table(layout.trace(*run.key), pa.table({"run_id": [run.run_id]}))
    io.write_table(layout.metrics(*run.key), pa.table({"run_id": [metrics_run_id or run.run_id]}))


def test_corrupt_or_partial_result_files_are_not_results(tmp_path):
    runs = parse_grid(GOOD).expand()
    layout = SweepLayout(str(tmp_path), "bad")
    good, torn, hidden, torn_logits = runs
    land(layout, good)
    land(layout, torn_logits)
    path = Path(layout.logits(*torn_logits.key))
    path.write_bytes(path.read_bytes()[:-20])  # the end (the footer) lost: not a result
    full = pa.BufferOutputStream()
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"run_id": [torn.run_id]}), full)
    data = full.getvalue().to_pybytes()
    Path(layout.metrics(*torn.key)).parent.mkdir(parents=True)
    Path(layout.metrics(*torn.key)).write_bytes(data[: len(data) // 2])  # a crash mid-write
    hid = Path(layout.metrics(*hidden.key))
    hid.parent.mkdir(parents=True)
    (hid.parent / ".part-0.parquet.tmp-abcd").write_bytes(data)
    assert finished_run_ids(layout, runs) == {good.run_id}
    done, broken = finished_and_broken(layout, runs)
    assert done == {good.run_id} and [s.run_id for s in broken] == [torn_logits.run_id]


def test_finished_runs_come_from_one_scan_that_skips_temporaries_and_other_runs(tmp_path):
    runs = parse_grid(GOOD).expand()
    layout = SweepLayout(str(tmp_path), "scan")
    a, b, hidden, foreign = runs[0], runs[1], runs[2], runs[3]
    for run in (a, b):
        land(layout, run)
    tmp = Path(layout.metrics(*hidden.key)).parent / ".part-0.parquet.tmp-abcd"
    tmp.parent.mkdir(parents=True)
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"run_id": [hidden.run_id]}), tmp)  # whole, but not yet renamed
    io.write_table(layout.metrics(*foreign.key), pa.table({"run_id": ["another-grid-s-run"]}))
    (Path(layout.metrics_dir) / "notes.txt").write_text("not a table")  # a stray file
    by_file = io.column_by_file(layout.metrics_dir, "run_id")  # no file is torn: one scan
    assert by_file == {
        layout.metrics(*a.key): a.run_id,
        layout.metrics(*b.key): b.run_id,
        layout.metrics(*foreign.key): "another-grid-s-run",
    }
    assert finished_run_ids(layout, runs) == {a.run_id, b.run_id}


@pytest.mark.ray
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU to give")
def test_gpu_fraction_beyond_the_cluster_is_refused_before_writing(tmp_path):
    path = write_grid(tmp_path / "g.yaml", GOOD + "resources: {num_gpus: 0.25}\n")
    proc = jamsweep("submit", str(path), "--results", str(tmp_path / "res"), "--num-cpus", "1")
    fails_cleanly(proc, "resources.num_gpus = 0.25", "The cluster offers: node", "0 GPUs")
    assert not (tmp_path / "res" / "bad").exists()


def test_a_grid_that_is_not_text_is_a_clear_error(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    fails_cleanly(jamsweep("submit", str(path)), "not UTF-8")


def test_a_retry_after_the_results_landed_does_not_retrain(tmp_path):
    from workers.execute import execute

    spec = parse_grid(GOOD).expand()[1]
    layout = SweepLayout(str(tmp_path), "bad")
    first = execute(spec, layout)
    stamp = os.stat(layout.logits(*spec.key)).st_mtime_ns
    again = execute(spec, layout)  # the worker died after writing, Ray retries the task
    assert again["run_id"] == first["run_id"] and again["steps"] == first["steps"]
    assert os.stat(layout.logits(*spec.key)).st_mtime_ns == stamp


@pytest.mark.ray
def test_a_torn_logits_or_trace_file_is_set_aside_and_only_its_run_is_trained_again(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", GOOD)
    res = tmp_path / "res"
    assert jamsweep("submit", str(grid), "--results", str(res), "--num-cpus", "2").returncode == 0
    layout = SweepLayout(str(res), "bad")
    runs = parse_grid(GOOD).expand()
    torn_logits, torn_trace, *kept = runs
    for path in (
        layout.file("logits", torn_logits.run_id, *torn_logits.key),
        layout.file("trace", torn_trace.run_id, *torn_trace.key),
    ):
        Path(path).write_bytes(Path(path).read_bytes()[:100])  # a partial copy, say
    stamps = {s.run_id: os.stat(layout.file("metrics", s.run_id, *s.key)).st_mtime_ns for s in runs}
    dry = jamsweep("submit", str(grid), "--results", str(res), "--dry-run")
    assert dry.returncode == 0 and "2 would run" in dry.stdout, dry.stdout
    assert "2 finished run(s) have result files that cannot be read" in dry.stdout
    proc = jamsweep("submit", str(grid), "--results", str(res), "--num-cpus", "2")
    assert proc.returncode == 0, proc.stderr
    assert "2 finished run(s) had result files that cannot be read" in proc.stderr
    assert "4 runs, 2 already done, 2 to run" in proc.stderr
    for s in kept:  # untouched
        assert os.stat(layout.file("metrics", s.run_id, *s.key)).st_mtime_ns == stamps[s.run_id]
    for s in (torn_logits, torn_trace):  # trained again, whole now
        assert os.stat(layout.file("metrics", s.run_id, *s.key)).st_mtime_ns != stamps[s.run_id]
    assert finished_run_ids(layout, runs) == {s.run_id for s in runs}
    (stamp,) = (res / "bad" / "set_aside").iterdir()
    torn = stamp / Path(layout.file("logits", torn_logits.run_id, *torn_logits.key)).relative_to(
        res / "bad"
    )
    assert torn.stat().st_size == 100  # kept as it was, not deleted
    assert len(list(stamp.rglob("*.parquet"))) == 6  # both runs, 3 files each
