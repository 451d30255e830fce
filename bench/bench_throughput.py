"""Training throughput against the authors' per-model loop, in the same process.

P = 10,000 MNIST points (parity, 10 whitened PCA components), depth 5, float64, one thread
(as in a Ray worker with num_cpus: 1). For each width h and phase it times one step of:
  - authors: their loop re-implemented: a forward without a graph over a random
    permutation of the points finds the violators, forward/backward on those only,
    torch.optim.Adam (its default, single-tensor form), one model at a time;
  - jamsweep: one run's step as workers/train.py takes it (violator-only, fused Adam);
  - pack: a step of workers/pack.py over `--pack` runs (seeds), per run.
Phases: early (every run from its init: nearly every point violated) and late (a state with
< 1% of the points violated: the net's own signs as labels, its read-out scaled so that
0.3 to 1% of the points sit inside the margin, a different fraction for each run of a pack).
Prints ms per run-step and the ratios authors / jamsweep and authors / pack.

    .venv/bin/python bench/bench_throughput.py [--widths 4 16 64 256] [--pack 20] [--seconds 1]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from schemas.grid import parse_grid
from workers.data import Dataset, load_dataset
from workers.pack import Member, Pack, outputs, pack_step, stack_runs
from workers.pack_plan import auto_pack_size
from workers.train import DENSE_FRACTION, build_model, hinge_step_loss, make_optimizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GRID = """
sweep: bench
dataset: {{name: mnist_parity_pca, root: {root}, train_size: {p}, test_size: 1000}}
architectures: [{{name: fc5, depth: 5, widths: [{h}]}}]
seeds: {seeds}
training: {{lr_max: 1.0e-4}}
"""


def authors_step(model, optimizer, x, y) -> None:  # noqa: ANN001
    with torch.no_grad():
        perm = torch.randperm(len(x))
        out = model(x[perm])[:, 0]
        violators = perm[(1 - out * y[perm]) > 0]
    out = model(x[violators])[:, 0]
    loss = 0.5 * torch.relu(1 - out * y[violators]).pow(2).sum() / len(x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def timed(step, seconds: float) -> float:  # noqa: ANN001
    """Seconds per call of step(), over at least `seconds` (after one warm-up call)."""
    step()
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        step()
        n += 1
    return (time.perf_counter() - start) / n


def late_scales(g: torch.Tensor, fractions: list[float]) -> list[float]:
    """Read-out scales c such that a fraction q of the points has c |g| < 1."""
    return [1 / torch.quantile(g.abs(), q).item() for q in fractions]


def make_late(params: list[torch.Tensor], shift: float, scales: torch.Tensor) -> None:
    """Shift the read-out's bias (points where every last unit is dead have f = 0), then
    scale the read-out: f -> c (f + shift). params: [..., W_out, b_out], stacked or not."""
    with torch.no_grad():
        weight, bias = params[-2], params[-1]
        bias.add_(shift)
        weight.mul_(scales.view(-1, *[1] * (weight.ndim - 1)) if scales.ndim else scales)
        bias.mul_(scales.view(-1, *[1] * (bias.ndim - 1)) if scales.ndim else scales)


def authors_time(spec, x, y, shift, scale, seconds: float) -> float:  # noqa: ANN001
    model = build_model(spec, 10)
    make_late(list(model.parameters()), shift, torch.tensor(scale))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-8)
    return timed(lambda: authors_step(model, optimizer, x, y), seconds)


def single_time(spec, split, shift, scale, seconds: float) -> float:  # noqa: ANN001
    model = build_model(spec, 10)
    make_late(list(model.parameters()), shift, torch.tensor(scale))
    optimizer = make_optimizer(spec, model)
    state = {"dense": True}

    def step() -> None:  # as workers/train.py's loop takes a full-batch hinge step
        loss, fraction = hinge_step_loss(model, split, spec, state["dense"])
        state["dense"] = fraction > DENSE_FRACTION
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed(step, seconds)


def pack_time(specs, data, split, shift, scales, seconds: float) -> float:  # noqa: ANN001
    """Seconds per run-step of a pack of len(specs) runs."""
    pack: Pack = stack_runs([Member(s) for s in specs], [None] * len(specs), data)
    if shift:  # late: every run from the seed-0 state, each with its own violated share
        with torch.no_grad():
            for p in pack.params:
                p.copy_(p[0].expand_as(p))
        make_late(pack.params, shift, scales)
    state = {"dense": True}

    def step() -> None:  # as workers/pack.py's loop takes it
        f = None if state["dense"] else outputs(pack, split.x)
        state["dense"] = pack_step(pack, split, f) > DENSE_FRACTION

    return timed(step, seconds) / len(specs)


def bench_width(h: float, pack_size: int, data: Dataset, seconds: float) -> None:
    text = GRID.format(root=DATA, h=h, seeds=max(pack_size, 1), p=len(data.train))
    specs = parse_grid(text).expand()
    spec, x = specs[0], data.train.x
    with torch.no_grad():
        f0 = build_model(spec, 10)(x)[:, 0]
    shift = f0.abs().mean().item()
    y_late = torch.where(f0 + shift >= 0, 1.0, -1.0).to(x)
    for phase in ("early", "late"):
        if phase == "early":
            y, shift_now, scale, scales = data.train.y, 0.0, 1.0, torch.ones(len(specs))
        else:
            y, shift_now = y_late, shift
            scale = late_scales(f0 + shift, [0.005])[0]
            shares = torch.linspace(0.003, 0.01, len(specs)).tolist()
            scales = torch.tensor(late_scales(f0 + shift, shares), dtype=x.dtype)
        split = type(data.train)(x, y, data.train.index)
        t_authors = authors_time(spec, x, y, shift_now, scale, seconds)
        t_single = single_time(spec, split, shift_now, scale, seconds)
        row = f"h={h:<4g} {phase:<5}  authors {t_authors * 1e3:8.2f}   jamsweep "
        row += f"{t_single * 1e3:8.2f} ({t_authors / t_single:4.2f}x)"
        if pack_size > 1:
            t_pack = pack_time(specs, data, split, shift_now, scales, seconds)
            row += f"   pack of {pack_size} {t_pack * 1e3:8.2f} ({t_authors / t_pack:4.2f}x)"
        else:
            row += "   (auto does not pack this P * h on a CPU)"
        print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", type=float, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--pack", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=10_000, help="P")
    parser.add_argument(
        "--force-pack", action="store_true", help="time packs where auto would not pack"
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = parse_grid(GRID.format(root=DATA, h=4, seeds=1, p=args.train_size)).expand()[0]
    data = load_dataset(spec.dataset)
    print(f"P = {len(data.train)}, d = 10, L = 5, float64, 1 thread; ms per run-step")
    for h in args.widths:
        packed = args.force_pack or auto_pack_size(h, 5, len(data.train), gpu=False) > 1
        bench_width(h, args.pack if packed else 1, data, args.seconds)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"peak RSS of this process (a worker's work, P = {len(data.train)}): {peak:.2f} GiB")


if __name__ == "__main__":
    main()
