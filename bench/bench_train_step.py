"""Time of one full-batch (dense) training step of the paper's FC net, in the same process:
- torch's default (single-tensor) Adam with autograd;
- torch's fused Adam with autograd: how a torch module run steps (a CNN, a user's module;
  FC runs before issue 19);
- a pack of one (workers/pack.py: hand-written backward, flat-buffer Adam): how an FC run
  steps now, alone or packed.

  .venv/bin/python bench/bench_train_step.py [--train-size 1000] [--width 8] [--steps 1500]
"""

from __future__ import annotations

import argparse
import time

import torch

from schemas.grid import parse_grid
from workers.data import load_dataset
from workers.loop import DENSE, Member
from workers.pack import stack_runs
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


def ms_per_pack_step(spec, data, steps: int) -> float:  # noqa: ANN001
    pack = stack_runs([Member(spec)], [None], data)
    start = time.perf_counter()
    for _ in range(steps):
        pack.step(DENSE)
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
    best = {"default": float("inf"), "fused": float("inf"), "pack": float("inf")}
    for _ in range(3):  # interleaved, best of three: the machine is noisy
        for fused in (False, True):
            took = ms_per_step(spec, data, fused, args.steps)
            best["fused" if fused else "default"] = min(best["fused" if fused else "default"], took)
        best["pack"] = min(best["pack"], ms_per_pack_step(spec, data, args.steps))
    print(f"FC depth 5, h = {args.width:g}, P = {args.train_size}, float64, 1 thread")
    print(f"default Adam:  {best['default']:.3f} ms/step")
    print(f"fused Adam:    {best['fused']:.3f} ms/step (a torch module run)")
    print(f"pack of one:   {best['pack']:.3f} ms/step (an FC run)")
    print(f"ratio default / fused: {best['default'] / best['fused']:.2f}x")
    print(f"ratio fused / pack of one: {best['fused'] / best['pack']:.2f}x")


if __name__ == "__main__":
    main()
