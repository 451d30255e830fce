"""What a finished demo must hold, wherever it ran (embedded Ray, SLURM): the checks of
`make demo`'s promise (every run done, a curve table with every width of the grid)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from schemas.grid import load_grid

ROOT = Path(__file__).resolve().parents[1]
DEMO_GRID = ROOT / "examples" / "demo.yaml"


def check_finished_sweep(sweep_dir: Path, grid: Path = DEMO_GRID) -> pd.DataFrame:
    """Every run of the grid done, one curve row per (arch, width); returns the curves."""
    spec, text = load_grid(grid)
    runs = spec.expand()
    assert (sweep_dir / "grid.yaml").read_text() == text
    status = pd.read_parquet(sweep_dir / "status.parquet")
    assert len(status) == len(runs), status
    assert set(status["state"]) == {"done"}, status["state"].value_counts().to_dict()
    assert set(status["run_id"]) == {r.run_id for r in runs}
    metrics = pd.read_parquet(sweep_dir / "metrics")
    assert sorted(metrics["run_id"]) == sorted(r.run_id for r in runs)
    curves = pd.read_parquet(sweep_dir / "curves.parquet")
    expected = sorted((a.name, float(w)) for a in spec.architectures for w in a.widths)
    assert sorted(zip(curves["arch"], curves["width"].astype(float), strict=True)) == expected
    assert (curves["n_seeds"] == len(spec.seed_list)).all()
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert set(summary["n_star"]) == {a.name for a in spec.architectures}
    assert (sweep_dir / "figures" / "fig2_test_error.png").stat().st_size > 10_000
    return curves.sort_values(["arch", "n_params"]).reset_index(drop=True)


def check_no_dead_nets(sweep_dir: Path, chance: float = 0.5) -> None:
    """No run of the demo died (every ReLU off: f constant, test error at or above chance;
    f = 0 counts every sample as an error): each run's test error is well below chance."""
    metrics = pd.read_parquet(sweep_dir / "metrics")
    dead = metrics[metrics["test_error"] >= 0.8 * chance]
    assert dead.empty, dead[["width", "seed", "test_error", "n_unsat"]]
