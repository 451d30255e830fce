"""Orchestration cost per run at scale: many trivial runs (max_steps: 1, P = 20) driven
through an embedded Ray by jamsweep's driver and tracker, next to, in the same run:
  - bare Ray: ray.init, as many trivial tasks (`return None`) and ray.get, ray.shutdown;
  - the runs' own work (train one step, write three Parquet files), timed in this process
    on a sample of the runs and divided by the cores.
orchestration per run = jamsweep's wall time per run - the work per run / cores; the target
is at most 3x bare Ray's cost per run. Then `status` of that sweep from its files (target:
under 1 s).

    .venv/bin/python bench/bench_scale.py [--runs 2000] [--cpus 2] [--layout 2]

`--layout` is the sweep's layout of the run tables (schemas.layout): 2, a flat file per
run (what every new sweep keeps), or 1, the Hive folders of sweeps made before sweep axes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

# 20 small widths x as many seeds as it takes: every run as trivial as the next. (The
# widths once grew with the sweep, 2 ... 501 at 10,000 runs, so that the last runs trained
# and saved nets of 250,000 weights while the work was timed on the first, smallest ones:
# that growth was counted as orchestration, and read as a cost of files piling up.)
WIDTHS = list(range(2, 22))
GRID = """
sweep: scale
dataset: {{name: digits_parity_pca, train_size: 20, test_size: 20, pca_dim: 10}}
architectures: [{{name: fc2, depth: 2, widths: {widths}}}]
seeds: {seeds}
training: {{max_steps: 1}}
"""


def grid_text(runs: int) -> str:
    return GRID.format(widths=WIDTHS, seeds=max(1, runs // len(WIDTHS)))


def bare_ray(n: int, cpus: int) -> float:
    from orchestrator.cluster import backend  # sets Ray's environment before ray is imported

    ray = backend.ray

    def noop() -> None:
        return None

    start = time.perf_counter()
    with backend.RayBackend(None, num_cpus=cpus):
        task = ray.remote(num_cpus=1)(noop)
        ray.get([task.remote() for _ in range(n)])
    return time.perf_counter() - start


def jamsweep_drive(root: str, specs: list, cpus: int, version: int) -> float:
    from orchestrator.cluster.driver import run_on_ray
    from orchestrator.cluster.lease import Holder, acquire
    from orchestrator.results.store import manifest_table
    from schemas.layout import SweepLayout
    from workers import io

    layout = SweepLayout(root, "scale", version)
    io.write_text(layout.layout_json, layout.layout_text())
    io.write_text(layout.grid_yaml, grid_text(len(specs)))
    io.write_table(layout.manifest, manifest_table(specs))
    start = time.perf_counter()
    with acquire(layout, Holder.this_process(None)) as held:
        st = run_on_ray(layout, specs, specs, held, address=None, num_cpus=cpus)
    seconds = time.perf_counter() - start
    assert st.counts["done"] == len(specs), st.counts
    return seconds


def work_per_run(root: str, specs: list, sample: int, version: int) -> float:
    """One run's own work (data cached, as in a warm worker), in this process."""
    import torch

    from schemas.layout import SweepLayout
    from workers.execute import execute

    torch.set_num_threads(1)  # as in a Ray worker
    layout = SweepLayout(root, "work", version)
    execute(specs[0], layout)  # warm: data loaded and cached, as in a worker
    chosen = specs[1 :: max(1, len(specs) // sample)][:sample]  # spread over the sweep
    start = time.perf_counter()
    for spec in chosen:
        execute(spec, layout)
    return (time.perf_counter() - start) / len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--sample", type=int, default=200, help="runs timed for the work")
    parser.add_argument("--layout", type=int, choices=(1, 2), default=2, help="run tables")
    args = parser.parse_args()
    from orchestrator.sweep import status
    from schemas.grid import parse_grid

    specs = parse_grid(grid_text(args.runs)).expand()
    n = len(specs)
    root = tempfile.mkdtemp(prefix="jamsweep-bench-scale-")
    try:
        t_bare = bare_ray(n, args.cpus)
        t_sweep = jamsweep_drive(root, specs, args.cpus, args.layout)
        t_work = work_per_run(root, specs, args.sample, args.layout)
        start = time.perf_counter()
        st = status("scale", results=root)
        t_status = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert st.counts["done"] == n
    bare, per_run = t_bare / n, t_sweep / n
    orchestration = per_run - t_work / args.cpus
    print(f"{n} trivial runs on {args.cpus} CPUs (embedded Ray), layout {args.layout}")
    print(f"bare Ray (init, {n} tasks, shutdown): {t_bare:.1f} s = {1e3 * bare:.2f} ms/run")
    print(f"jamsweep (init, tracker, {n} runs):  {t_sweep:.1f} s = {1e3 * per_run:.2f} ms/run")
    print(f"the runs' own work / {args.cpus} CPUs:     {1e3 * t_work / args.cpus:.2f} ms/run")
    print(f"orchestration per run: {1e3 * orchestration:.2f} ms = {orchestration / bare:.2f}x bare")
    print(f"status of the {n}-run sweep from its files: {t_status:.3f} s")


if __name__ == "__main__":
    main()
