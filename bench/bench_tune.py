"""Sweep overhead next to Ray Tune: 100 runs (10 widths x 10 seeds) of a 300-step FC
training on digits parity (P = 1000), three ways in the same run:
  - jamsweep: `submit` of the grid through its embedded Ray, the whole sweep (Ray's start,
    the runs, the reduce, the figures): with `pack: 1` (one run per task, the default, as
    Tune runs them) and with `pack: auto` (runs of nearby widths as one batched model);
  - Ray Tune: a `Tuner` with `grid_search` over width x seed on an embedded Ray of the same
    CPUs, each trial calling the training function jamsweep's tasks call
    (workers.execute.execute: train, write logits, trace and metrics);
  - sequential: that function for every run, one after the other, in this process.
Targets: jamsweep >= 8x faster than Tune, and at most 1.3x the sequential time / cores.
Needs the `bench` extra (ray[tune]); `make bench` installs it.

    .venv/bin/python bench/bench_tune.py [--seeds 10] [--num-cpus 2] [--steps 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from orchestrator.sweep import submit
from schemas.grid import parse_grid
from schemas.layout import SweepLayout
from workers.execute import execute

WIDTHS = [3, 4, 5, 6, 7, 8, 10, 12, 16, 24]
GRID = """
sweep: overhead
dataset: {{name: digits_parity_pca, train_size: 1000, pca_dim: 10}}
architectures: [{{name: fc5, depth: 5, widths: {widths}}}]
seeds: {seeds}
training: {{max_steps: {steps}}}
resources: {{pack: {pack}}}
"""


def jamsweep(grid_path: Path, results: Path, cpus: int) -> float:
    start = time.perf_counter()
    submit(grid_path, results=str(results), num_cpus=cpus)
    return time.perf_counter() - start


def ray_tune(specs: list, results: Path, cpus: int) -> float:
    from ray import tune

    from orchestrator.cluster.backend import RayBackend

    layout = SweepLayout(str(results), specs[0].sweep)
    by_key = {(s.width, s.seed): s for s in specs}

    def trial(config: dict) -> dict:
        return execute(by_key[(config["width"], config["seed"])], layout)

    start = time.perf_counter()
    with RayBackend(None, num_cpus=cpus):
        tuner = tune.Tuner(
            tune.with_resources(trial, {"cpu": 1}),
            param_space={
                "width": tune.grid_search(sorted({s.width for s in specs})),
                "seed": tune.grid_search(sorted({s.seed for s in specs})),
            },
            run_config=tune.RunConfig(storage_path=str(results / "tune"), verbose=0),
        )
        grid = tuner.fit()
        errors = [grid[i].error for i in range(len(grid)) if grid[i].error is not None]
        if errors:
            raise RuntimeError(f"{len(errors)} Tune trials failed: {errors[0]}")
    return time.perf_counter() - start


def sequential(specs: list, results: Path) -> float:
    layout = SweepLayout(str(results), specs[0].sweep)
    torch.set_num_threads(1)  # as one run in a Ray worker of one CPU
    start = time.perf_counter()
    for spec in specs:
        execute(spec, layout)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=10, help="runs = 10 widths x seeds")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    cpus = args.num_cpus
    with tempfile.TemporaryDirectory(prefix="jamsweep-bench-tune-") as tmp:
        root = Path(tmp)
        walls = {}
        for pack in ("1", "auto"):
            text = GRID.format(widths=WIDTHS, seeds=args.seeds, steps=args.steps, pack=pack)
            (root / f"grid-{pack}.yaml").write_text(text)
            walls[pack] = jamsweep(root / f"grid-{pack}.yaml", root / f"jamsweep-{pack}", cpus)
        specs = parse_grid(text).expand()
        t_seq = sequential(specs, root / "sequential")
        t_tune = ray_tune(specs, root / "tune", cpus)
    ideal = t_seq / cpus
    print(f"{len(specs)} runs of {args.steps} steps (digits parity, P = 1000), {cpus} CPUs")
    print(f"sequential, one process      {t_seq:7.1f} s   / cores = {ideal:.1f} s")
    print(f"Ray Tune (grid_search)       {t_tune:7.1f} s")
    for pack, wall in walls.items():
        print(
            f"jamsweep submit, pack: {pack:<4}  {wall:7.1f} s   {t_tune / wall:5.2f}x faster than "
            f"Tune (target >= 8x), {wall / ideal:4.2f}x sequential / cores (target <= 1.3x)"
        )


if __name__ == "__main__":
    main()
