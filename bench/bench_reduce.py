"""Benchmark: the streaming reduce against a straightforward pandas reduction, same run.

Generates a sweep's result files (default: 20 seeds x 40 widths x 60,000 test points, one
output, 1,000 train points per run: the paper's MNIST scale, 48M test outputs), then runs
each variant in a fresh process and prints wall time, peak memory and the ratio of the two.
Peak memory is the rise of the process's anonymous resident memory (RssAnon, sampled every
millisecond by a thread) over its value after every module is imported: file-backed pages
(shared libraries) are left out, because the kernel may drop and re-read them at any time
on a shared machine. It is set against the size of one width's final test outputs (f and
||grad f|| as float64: seeds x test points x 2 x 8 bytes).

    .venv/bin/python bench/bench_reduce.py --scale 0.25    # 15,000 test points per run

The baseline reads every run's logits into one pandas frame (`pandas.read_parquet` of the
logits folder), selects the final test rows, and computes the same columns with groupby;
for ensemble.parquet it pivots each width to a (samples x runs) frame and averages the
same seed subsets. Both variants skip figures. The script checks that both give the same
numbers before printing the ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
SWEEP = "synth"
PANDAS_BYTES_PER_ROW = 420  # the baseline's peak per logits row, measured at --scale 0.25
CHECKED = [
    "test_error_mean",
    "test_error_std",
    "train_error_mean",
    "ens_test_error",
    "gap",
    "f_norm",
    "f_var",
    "grad_norm",
    "delta",
]


def available_bytes() -> int:
    """MemAvailable of the machine (Linux)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def status_kib(field: str) -> int:
    """A field of /proc/self/status (RssAnon, VmHWM, ...), in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class AnonPeak(threading.Thread):
    """Samples RssAnon every millisecond until stopped; `peak` is the largest value seen."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = status_kib("RssAnon")
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, status_kib("RssAnon"))
            time.sleep(0.001)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return max(self.peak, status_kib("RssAnon"))


# -- generating the files --------------------------------------------------------------------


def generate(results: str, *, seeds: int, widths: int, n_test: int, n_train: int) -> dict:
    from sweepfiles import default_converged, write_sweep

    width_list = list(range(2, 2 + widths))
    started = time.perf_counter()
    write_sweep(
        results,
        sweep=SWEEP,
        widths=width_list,
        seeds=seeds,
        n_test=n_test,
        n_train=n_train,
        converged=default_converged(widths // 2),
        snapshot=False,
    )
    disk = sum(p.stat().st_size for p in Path(results, SWEEP).rglob("*.parquet"))
    return {"seconds": time.perf_counter() - started, "disk_bytes": disk}


# -- the two variants (each run in its own process) -----------------------------------------


def run_stream(results: str, max_subsets: int) -> None:
    from orchestrator import sweep as api

    api.reduce(SWEEP, results=results, max_subsets=max_subsets, figures=False)


def run_pandas(results: str, max_subsets: int) -> None:
    """The straightforward reduction: one frame of everything, groupby."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from schemas.layout import SweepLayout
    from workers import io
    from workers.ensembles import seed_subsets

    layout = SweepLayout(results, SWEEP)
    logits = pd.read_parquet(layout.logits_dir)  # every run, every row
    metrics = pd.read_parquet(layout.metrics_dir)
    for frame in (logits, metrics):
        frame["arch"] = frame["arch"].astype(str)
        frame["width"] = frame["width"].astype(str).astype(float)
        frame["seed"] = frame["seed"].astype(str).astype(int)
    test = logits.merge(metrics[["run_id", "steps"]], on="run_id")
    test = test[(test["split"] == "test") & (test["step"] == test["steps"])].copy()
    test["wrong"] = test["label"] * test["f"] <= 0
    test["f2"] = test["f"] ** 2
    test["g2"] = test["grad_norm"] ** 2
    runs = (
        test.groupby("run_id")
        .agg(error=("wrong", "mean"), f2=("f2", "mean"), g2=("g2", "mean"))
        .reset_index()
    )
    runs["f_norm"], runs["grad_norm"] = np.sqrt(runs["f2"]), np.sqrt(runs["g2"])
    runs = runs.merge(metrics.drop(columns=["f_norm", "grad_norm"]), on="run_id")
    keys = ["arch", "width"]
    curves = (
        runs.groupby(keys)
        .agg(
            n_params=("n_params", "first"),
            n_seeds=("run_id", "size"),
            n_converged=("converged", "sum"),
            test_error_mean=("error", "mean"),
            test_error_std=("error", lambda e: e.std(ddof=0)),
            train_error_mean=("train_error", "mean"),
            train_loss_mean=("train_loss", "mean"),
            f_norm=("f_norm", "mean"),
            grad_norm=("grad_norm", "mean"),
        )
        .reset_index()
    )
    members = test[test["run_id"].isin(metrics.loc[metrics["converged"], "run_id"])]
    f_bar = members.groupby([*keys, "sample"])["f"].mean().rename("f_bar").reset_index()
    labels = members.groupby([*keys, "sample"])["label"].first().reset_index()
    ens = f_bar.merge(labels, on=[*keys, "sample"])
    ens["wrong"] = ens["label"] * ens["f_bar"] <= 0
    ens_error = ens.groupby(keys)["wrong"].mean().rename("ens_test_error")
    dev = members.merge(f_bar, on=[*keys, "sample"])
    dev["d2"] = (dev["f"] - dev["f_bar"]) ** 2
    per_run = dev.groupby([*keys, "run_id"])["d2"].mean().reset_index()
    f_var = per_run.groupby(keys)["d2"].mean().rename("f_var")
    member_runs = (
        runs[runs["converged"]]
        .groupby(keys)
        .agg(member_error=("error", "mean"), member_grad=("grad_norm", "mean"))
    )
    curves = curves.set_index(keys).join([ens_error, f_var, member_runs]).reset_index()
    curves["gap"] = curves["member_error"] - curves["ens_test_error"]
    curves["delta"] = np.sqrt(curves["f_var"]) / curves["member_grad"]
    rows = []
    for (arch, width), group in members.groupby(keys):
        table = group.pivot(index="sample", columns="seed", values="f")  # (samples, seeds)
        label = group.groupby("sample")["label"].first().loc[table.index].to_numpy()
        centre = table.mean(axis=1)
        cols = sorted(table.columns)  # by seed, as the reducer orders a width's runs
        grad = member_runs.loc[(arch, width), "member_grad"]
        for n in range(1, len(cols) + 1):
            subsets, exact = seed_subsets(len(cols), n, max_subsets=max_subsets)
            errors, dist2 = [], []
            for subset in subsets:
                avg = table[[cols[i] for i in subset]].mean(axis=1)
                errors.append(float(np.mean(label * avg.to_numpy() <= 0)))
                dist2.append(float(((avg - centre) ** 2).mean()))
            rows.append(
                {
                    "arch": arch,
                    "width": width,
                    "n": n,
                    "n_subsets": len(subsets),
                    "exact": exact,
                    "test_error_mean": float(np.mean(errors)),
                    "test_error_std": float(np.std(errors)),
                    "delta": math.sqrt(float(np.mean(dist2))) / grad,
                }
            )
    out = f"{layout.root}/bench_pandas_"
    io.write_table(out + "curves.parquet", pa.Table.from_pandas(curves, preserve_index=False))
    io.write_table(
        out + "ensemble.parquet", pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    )


def measure(variant: str, results: str, max_subsets: int) -> dict:
    """Run one variant here (called in a child process) and return its numbers."""
    # Every module either variant uses is imported before the baseline is taken, so the
    # rise measures data, not code.
    import pandas  # noqa: F401
    import pyarrow.dataset  # noqa: F401

    import orchestrator.results.plots  # noqa: F401  (matplotlib)
    import orchestrator.sweep  # noqa: F401  (torch, pyarrow, numpy)
    import workers.fits  # noqa: F401

    before = status_kib("RssAnon")
    sampler = AnonPeak()
    sampler.start()
    started = time.perf_counter()
    {"stream": run_stream, "pandas": run_pandas}[variant](results, max_subsets)
    seconds = time.perf_counter() - started
    return {
        "variant": variant,
        "seconds": seconds,
        "anon_after_imports_kib": before,
        "peak_rise_kib": sampler.stop() - before,
    }


def child(variant: str, results: str, max_subsets: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--results",
            results,
            "--max-subsets",
            str(max_subsets),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_numbers(results: str) -> float:
    """Largest absolute difference between the two variants' curves and ensemble tables."""
    import numpy as np
    import pandas as pd

    root = Path(results, SWEEP)
    a = pd.read_parquet(root / "curves.parquet").sort_values(["arch", "width"])
    b = pd.read_parquet(root / "bench_pandas_curves.parquet").sort_values(["arch", "width"])
    worst = max(
        np.nanmax(np.abs(a[c].to_numpy(float) - b[c].to_numpy(float)), initial=0.0) for c in CHECKED
    )
    e = pd.read_parquet(root / "ensemble.parquet").sort_values(["arch", "width", "n"])
    f = pd.read_parquet(root / "bench_pandas_ensemble.parquet").sort_values(["arch", "width", "n"])
    for c in ("test_error_mean", "test_error_std", "delta"):
        worst = max(worst, float(np.max(np.abs(e[c].to_numpy(float) - f[c].to_numpy(float)))))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="fraction of the 60,000 test points per run (default 1)",
    )
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--widths", type=int, default=40)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--max-subsets", type=int, default=64)
    p.add_argument("--results", help="folder for the generated sweep (default: a temporary one)")
    p.add_argument("--skip-pandas", action="store_true", help="time the streaming reduce only")
    p.add_argument("--child", choices=["stream", "pandas"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.results, args.max_subsets)))
        return
    with tempfile.TemporaryDirectory(prefix="jamsweep-bench-") as tmp:
        bench(args, args.results or tmp)


def bench(args: argparse.Namespace, results: str) -> None:
    n_test = max(1, round(60_000 * args.scale))
    one_width = args.seeds * n_test * 2 * 8
    print(
        f"sweep: {args.seeds} seeds x {args.widths} widths x {n_test} test points "
        f"(+{args.n_train} train) = {args.seeds * args.widths * n_test / 1e6:.1f}M test outputs"
    )
    if not Path(results, SWEEP, "grid.yaml").exists():
        made = generate(
            results, seeds=args.seeds, widths=args.widths, n_test=n_test, n_train=args.n_train
        )
        print(
            f"generated in {made['seconds']:.1f} s, {made['disk_bytes'] / 2**20:.0f} MiB of Parquet"
        )
    print(f"one width's final test outputs (f, ||grad f||; float64): {one_width / 2**20:.1f} MiB")
    results_rows = [child("stream", results, args.max_subsets)]
    need = args.seeds * args.widths * (n_test + args.n_train) * PANDAS_BYTES_PER_ROW
    if not args.skip_pandas and need > 0.7 * available_bytes():
        print(
            f"pandas baseline skipped: it would need about {need / 2**30:.1f} GiB, more than "
            f"70% of the {available_bytes() / 2**30:.1f} GiB available (use a smaller --scale "
            "to compare both)"
        )
    elif not args.skip_pandas:
        results_rows.append(child("pandas", results, args.max_subsets))
    print(f"{'variant':<8} {'seconds':>9} {'peak rise MiB':>14} {'x one width':>12}")
    for r in results_rows:
        rise = r["peak_rise_kib"] * 1024
        print(
            f"{r['variant']:<8} {r['seconds']:9.2f} {rise / 2**20:14.1f} {rise / one_width:12.2f}"
        )
    if len(results_rows) == 2:
        stream, pandas_ = results_rows
        worst = same_numbers(results)
        print(f"max |stream - pandas| over curves and ensemble columns: {worst:.2e}")
        print(f"speed ratio (pandas / stream): {pandas_['seconds'] / stream['seconds']:.1f}x")
        print(
            f"memory ratio (pandas / stream peak rise): "
            f"{pandas_['peak_rise_kib'] / max(stream['peak_rise_kib'], 1):.1f}x"
        )


if __name__ == "__main__":
    main()
