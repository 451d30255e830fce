"""End to end: the whole sweep of examples/mnist_fc_p1000.yaml (real MNIST, P = 1000,
8 widths x 4 seeds) through jamsweep's embedded Ray, with `pack: auto` and with `pack: 1`,
in the same run. Prints both wall times, their ratio, N* of each and the largest difference
of a width's mean test error.

The full sweep (80,000 steps) takes minutes per variant on 2 cores; `--scale` shrinks the
step budget (default 0.05: 4,000 steps, what `make bench` runs).

    .venv/bin/python bench/bench_e2e.py [--scale 1] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from orchestrator.sweep import submit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist_fc_p1000.yaml"


def run(pack: object, scale: float, num_cpus: int, root: Path) -> tuple[float, dict, pd.Series]:
    grid = yaml.safe_load(EXAMPLE.read_text())
    grid["dataset"]["root"] = str((EXAMPLE.parent / grid["dataset"]["root"]).resolve())
    grid["training"]["max_steps"] = max(1, int(grid["training"]["max_steps"] * scale))
    grid["resources"]["pack"] = pack
    path = root / f"pack-{pack}.yaml"
    path.write_text(yaml.safe_dump(grid))
    start = time.perf_counter()
    submit(path, results=str(root / f"res-{pack}"), num_cpus=num_cpus)
    wall = time.perf_counter() - start
    sweep = root / f"res-{pack}" / grid["sweep"]
    summary = json.loads((sweep / "summary.json").read_text())
    metrics = pd.read_parquet(sweep / "metrics")
    return wall, summary["n_star"], metrics.groupby("width")["test_error"].mean()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.05, help="fraction of the step budget")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jamsweep-bench-e2e-") as tmp:
        root = Path(tmp)
        t_auto, n_auto, err_auto = run("auto", args.scale, args.num_cpus, root)
        t_one, n_one, err_one = run(1, args.scale, args.num_cpus, root)
    steps = int(80_000 * args.scale)
    print(f"{EXAMPLE.name}, {steps} steps, 32 runs, {args.num_cpus} CPUs")
    print(f"pack: 1     {t_one:7.1f} s   N* {n_one}")
    print(f"pack: auto  {t_auto:7.1f} s   N* {n_auto}")
    print(f"ratio pack 1 / auto: {t_one / t_auto:.2f}x")
    print(f"largest |test error difference| of a width: {(err_auto - err_one).abs().max():.4f}")


if __name__ == "__main__":
    main()
