"""How fast `jamsweep status` answers for a 10,000-run sweep (target: under 1 second).

Builds a sweep folder with a manifest, a status.parquet and 10,000 metrics files, then
times, in the same run:
  - status from the files (what `jamsweep status SWEEP` does without a cluster),
  - a straightforward baseline that opens every run's metrics file to decide it is done,
  - the live tracker's snapshot of 10,000 records through a real (embedded) Ray actor.
Prints each time and the ratio baseline / status.

    .venv/bin/python bench/bench_status.py [--runs 10000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import pyarrow as pa

from orchestrator.cluster.tracker import pending_record, records_table
from orchestrator.results.store import manifest_table
from orchestrator.sweep import status
from schemas.grid import parse_grid
from schemas.layout import METRICS_FILE_SCHEMA, SweepLayout
from schemas.run import RunStatus
from workers import io

GRID = """
sweep: big
dataset: {{name: digits_parity_pca, train_size: 100}}
architectures: [{{name: fc5, widths: {widths}}}]
seeds: 20
"""


def build(root: str, n_runs: int) -> tuple[SweepLayout, list]:
    widths = [1 + i * 0.25 for i in range(n_runs // 20)]
    grid = parse_grid(GRID.format(widths=widths))
    specs = grid.expand()
    layout = SweepLayout(root, "big")
    io.write_text(layout.grid_yaml, GRID)
    io.write_table(layout.manifest, manifest_table(specs))
    records = [pending_record(s).model_copy(update={"state": RunStatus.RUNNING}) for s in specs]
    io.write_table(layout.status, records_table(records))
    for s in specs[: len(specs) * 3 // 4]:  # three quarters finished
        row = {name: None for name in METRICS_FILE_SCHEMA.names} | {"run_id": s.run_id}
        io.write_table(
            layout.metrics(*s.key), pa.Table.from_pylist([row], schema=METRICS_FILE_SCHEMA)
        )
    return layout, specs


def baseline(layout: SweepLayout, specs: list) -> int:
    """Open every metrics file (what a first implementation does)."""
    done = 0
    for s in specs:
        path = layout.metrics(*s.key)
        if io.exists(path) and io.read_table(path, ["run_id"]).column(0)[0].as_py() == s.run_id:
            done += 1
    return done


def timed(fn, repeat: int = 3) -> tuple[float, object]:  # noqa: ANN001
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--no-ray", action="store_true", help="skip the live tracker timing")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="jamsweep-bench-status-")
    try:
        layout, specs = build(root, args.runs)
        t_status, st = timed(lambda: status("big", results=root))
        t_base, n_done = timed(lambda: baseline(layout, specs), repeat=1)
        assert st.counts["done"] == n_done == len(specs) * 3 // 4  # type: ignore[union-attr]
        print(f"status from files, {len(specs)} runs: {t_status:.3f} s")
        print(f"baseline (open every metrics file):  {t_base:.3f} s")
        print(f"ratio baseline / status: {t_base / t_status:.1f}x")
        if not args.no_ray:
            print(f"live tracker snapshot, {len(specs)} runs: {live_snapshot(layout):.3f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def live_snapshot(layout: SweepLayout) -> float:
    from orchestrator.cluster.backend import RayBackend
    from orchestrator.cluster.tracker import read_records

    with RayBackend(None, num_cpus=1) as backend:
        tracker = backend.tracker(layout)
        tracker.register(read_records(layout))
        seconds, records = timed(tracker.snapshot)
        assert len(records) == len(read_records(layout))  # type: ignore[arg-type]
    return seconds


if __name__ == "__main__":
    main()
