"""Every grid in examples/ is one a user can run: it validates and plans (`--dry-run`) as
shipped, and a scaled-down copy of it (tiny P, a few steps, its first two widths, two
seeds; its architecture, dataset, loss, optimizer and `pack` kept) runs end to end on a
real Ray. A shipped grid whose runs all fail (issue 18: `pack: auto` with CNNs) fails here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator import sweep as api
from schemas.grid import load_grid
from tests.conftest import ROOT, RayHead, jamsweep

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("grid", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_validates_and_plans_as_shipped(grid, tmp_path):
    report = api.submit(grid, results=str(tmp_path), dry_run=True)  # the data checked too
    spec, _ = load_grid(grid)
    assert report.dry_run and len(report.planned) == report.n_runs == len(spec.expand())
    assert all(s.n_params > 0 for s in report.planned)
    assert not any(tmp_path.iterdir())  # nothing written


def scaled_down(grid: Path, into: Path) -> Path:
    """A copy of `grid` that trains in seconds: P = 60 (test 100), 30 steps, the first two
    widths of each architecture, two seeds, no GPU; paths made absolute from its folder."""
    raw = yaml.safe_load(grid.read_text())
    data = raw["dataset"]
    for key in ("root", "train", "test"):
        if data.get(key) and "://" not in data[key]:
            data[key] = str((grid.parent / data[key]).resolve())
    # a list (a sweep axis) stays one, with two small values
    data["train_size"] = [40, 60] if isinstance(data["train_size"], list) else 60
    if not data.get("test"):
        data["test_size"] = 100
    for arch in raw["architectures"]:
        arch["widths"] = arch["widths"][:2]
    raw["seeds"] = 2
    training = raw.setdefault("training", {})
    training["max_steps"] = 30
    if training.get("batch_size"):
        training["batch_size"] = 30
    training.pop("snapshot_steps", None)
    resources = raw.setdefault("resources", {})
    resources.update(num_gpus=0, num_cpus=1)
    raw.pop("results", None)
    for arch in raw["architectures"]:  # a user's module travels beside its grid
        if arch.get("kind") == "module":
            top = arch["builder"].split(":")[0].split(".")[0]
            shutil.copyfile(grid.parent / f"{top}.py", into / f"{top}.py")
    path = into / grid.name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    cluster = RayHead(num_cpus=2, log=tmp_path_factory.mktemp("head") / "head.log")
    yield cluster
    cluster.kill()


@pytest.mark.ray
@pytest.mark.parametrize("grid", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_a_scaled_down_copy_of_each_example_runs_end_to_end(grid, tmp_path, head):
    small = scaled_down(grid, tmp_path)
    proc = jamsweep("submit", str(small), "--results", str(tmp_path / "res"), "--address", head.gcs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FAILED" not in proc.stderr
    raw = yaml.safe_load(small.read_text())
    points = (
        len(raw["dataset"]["train_size"]) if isinstance(raw["dataset"]["train_size"], list) else 1
    )
    n_runs = 2 * points * sum(len(a["widths"]) for a in raw["architectures"])
    assert f"{n_runs} done." in proc.stdout, proc.stdout[-2000:]
