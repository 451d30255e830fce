"""What keeping every net costs on disk (`checkpoint.keep_models`, on by default), for the
paper-sized grids: each width's model.pt (the state_dict torch.save writes, as a run
stores it) against the files a run writes anyway (logits, trace, metrics), written with the
project's own writers. The logits hold one row per training and test sample with random
outputs (float noise compresses as badly as real outputs do).

python bench/bench_model_disk.py                  # examples/mnist_fc_fig2.yaml's widths
python bench/bench_model_disk.py --grid examples/cifar10_cnn.yaml --test 10000
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.grid import load_grid  # noqa: E402
from schemas.layout import SweepLayout  # noqa: E402
from workers import io  # noqa: E402
from workers.data import Dataset, Split  # noqa: E402
from workers.execute import logits_table, metrics_table, trace_table  # noqa: E402
from workers.train import DTYPES, Outputs, RunResult, build_model, measurement_steps  # noqa: E402


def fake_data(spec, n_train: int, n_test: int) -> Dataset:  # noqa: ANN001
    def split(n: int, offset: int) -> Split:
        y = torch.randint(0, max(2, spec.n_outputs), (n,)).double()
        if spec.n_outputs == 1:
            y = y * 2 - 1
        return Split(torch.zeros(n, 1), y, torch.arange(offset, offset + n))

    return Dataset(split(n_train, 0), split(n_test, n_train))


def sizes(spec, data: Dataset, folder: Path) -> tuple[int, int]:  # noqa: ANN001
    """(bytes of the run's model.pt, bytes of its logits + trace + metrics)."""
    layout = SweepLayout(str(folder), "s")
    net = build_model(spec, spec.d_in).to(DTYPES[spec.training.dtype])  # as a run stores it
    io.save_checkpoint(
        layout.model(spec.run_id, *spec.key), {k: v.clone() for k, v in net.state_dict().items()}
    )
    shape = (lambda n: (n,)) if spec.n_outputs == 1 else (lambda n: (n, spec.n_outputs))
    outputs = [
        Outputs("train", 100, torch.randn(shape(len(data.train)), dtype=torch.float64)),
        Outputs(
            "test",
            100,
            torch.randn(shape(len(data.test)), dtype=torch.float64),
            torch.rand(len(data.test), dtype=torch.float64),
        ),
    ]
    steps = sorted(measurement_steps(spec.training.max_steps))
    trace = [
        {"step": s, "loss": 1.0, "n_unsat": 1, "max_delta": 1.0, "train_error": 0.1, "f_norm": 1.0}
        for s in steps
    ]
    metrics = {
        "steps": 100, "converged": True, "train_loss": 0.0, "n_unsat": 0, "max_delta": 0.0,
        "train_error": 0.0, "test_error": 0.1, "f_norm": 1.0, "grad_norm": 1.0, "lr": 1e-4,
        "wall_s": 1.0, "device": "cpu", "resumed_from": 0,
    }  # fmt: skip
    result = RunResult(outputs, metrics, trace)
    io.write_table(layout.logits(*spec.key), logits_table(spec, data, result))
    io.write_table(layout.trace(*spec.key), trace_table(spec, result))
    io.write_table(layout.metrics(*spec.key), metrics_table(spec, result))
    files = [layout.logits(*spec.key), layout.trace(*spec.key), layout.metrics(*spec.key)]
    return Path(layout.model(spec.run_id, *spec.key)).stat().st_size, sum(
        Path(f).stat().st_size for f in files
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="examples/mnist_fc_fig2.yaml")
    parser.add_argument("--test", type=int, default=60_000, help="test samples (MNIST: 60k)")
    parser.add_argument("--runs", type=int, default=2000, help="runs of the sweep scaled to")
    args = parser.parse_args()
    grid, _ = load_grid(args.grid)
    specs = [s for s in grid.expand() if s.seed == grid.seed_list[0]]
    n_seeds = len(grid.seed_list)
    total_model = total_rest = 0
    print(f"{args.grid}: P = {grid.dataset.train_size}, {args.test} test samples, {n_seeds} seeds")
    print(f"{'width':>6} {'N':>10} {'model.pt':>12} {'results':>12} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        data = fake_data(specs[0], grid.dataset.train_size, args.test)
        for spec in specs:
            model, rest = sizes(spec, data, Path(tmp))
            total_model, total_rest = total_model + model, total_rest + rest
            print(
                f"{spec.width:>6g} {spec.n_params:>10,} {model:>12,} {rest:>12,} "
                f"{model / rest:>7.3f}"
            )
    runs = len(specs) * n_seeds
    scale = args.runs / runs
    mib = 2**20
    print(
        f"the grid ({runs} runs): models {total_model * n_seeds / mib:,.1f} MiB on top of "
        f"{total_rest * n_seeds / mib:,.1f} MiB of results: +{100 * total_model / total_rest:.1f}%"
    )
    print(
        f"scaled to {args.runs} runs (the same widths, {math.ceil(n_seeds * scale)} seeds): "
        f"models {total_model * n_seeds * scale / 2**30:,.2f} GiB on top of "
        f"{total_rest * n_seeds * scale / 2**30:,.2f} GiB"
    )


if __name__ == "__main__":
    main()
