"""Time of one full-batch training step of the paper's FC net, with the fused Adam that
workers/train.py uses against torch's default (single-tensor) Adam, in the same process.

    .venv/bin/python bench/bench_train_step.py [--train-size 1000] [--width 8] [--steps 1500]
"""

from __future__ import annotations

import argparse
import time

import torch

from schemas.grid import parse_grid
from workers.data import load_dataset
from workers.train import build_model, loss_value, squeeze_output

GRID = """
sweep: bench
dataset: {{name: digits_parity_pca, train_size: {p}, pca_dim: 10}}
architectures: [{{name: fc5, depth: 5, widths: [{h}]}}]
seeds: 1
"""


def ms_per_step(spec, data, fused: bool, steps: int) -> float:  # noqa: ANN001
    model = build_model(spec, data.train.x.shape[1])
    kwargs = {"fused": True} if fused else {"foreach": False}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8, **kwargs)
    x, y = data.train.x, data.train.y
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_value("square_hinge", squeeze_output(model, x), y, 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--width", type=float, default=8)
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a Ray worker
    spec = parse_grid(GRID.format(p=args.train_size, h=args.width)).expand()[0]
    data = load_dataset(spec.dataset)
    best = {False: float("inf"), True: float("inf")}
    for _ in range(3):  # interleaved, best of three: the machine is noisy
        for fused in (False, True):
            best[fused] = min(best[fused], ms_per_step(spec, data, fused, args.steps))
    print(f"FC depth 5, h = {args.width:g}, P = {args.train_size}, float64, 1 thread")
    print(f"default Adam: {best[False]:.3f} ms/step")
    print(f"fused Adam:   {best[True]:.3f} ms/step")
    print(f"ratio default / fused: {best[False] / best[True]:.2f}x")


if __name__ == "__main__":
    main()
