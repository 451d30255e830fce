"""Training throughput against the authors' per-model loop, in the same process.

P = 10,000 MNIST points (parity, 10 whitened PCA components), depth 5, float64, one thread
(as in a Ray worker with num_cpus: 1). For each width h and phase it times one step of:
  - authors: their loop re-implemented: a forward without a graph over a random
    permutation of the points finds the violators, forward/backward on those only,
    torch.optim.Adam (its default, single-tensor form), one model at a time;
  - module: one run as a torch module with torch's fused Adam and autograd, as
    workers/trainer.py's `Solo` steps a CNN or a user's module (and FC runs before issue 19);
  - one: one FC run as workers/trainer.py trains it now: a pack of one (hand-written
    backward, flat-buffer Adam);
  - pack: a step of workers/pack.py over `--pack` runs (seeds), per run;
  - bmm: the arithmetic floor: the step's batched matmuls alone (forward, and the two of
    the backward), per run, timed in this run; the pack's "roofline" ratio is bmm / pack.
Every step has static shapes, as the loop takes them between two boundaries: dense early,
violators only (a capacity of twice the count plus 16) late.
Phases: early (every run from its init: nearly every point violated) and late (a state with
< 1% of the points violated: the net's own signs as labels, its read-out scaled so that
0.3 to 1% of the points sit inside the margin, a different fraction for each run of a pack).
Prints ms per run-step and the ratios authors / each.

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
from workers.loop import Member, Plan, member, plan_after
from workers.pack import Pack, stack_runs
from workers.pack_plan import auto_pack_size
from workers.train import build_model
from workers.trainer import Solo

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


def late_plan(f: torch.Tensor, y: torch.Tensor) -> Plan:
    """The plan the loop takes from outputs f (R, P): dense early, a capacity late."""
    return plan_after(int((1 - y * f > 0).sum(-1).max()), f.shape[-1])


def single_time(spec, data, shift, scale, seconds: float) -> float:  # noqa: ANN001
    """Seconds per step of one run as a torch module with fused Adam (`Solo`)."""
    engine = Solo(member(spec, None), data, None)
    make_late(list(engine.net.parameters()), shift, torch.tensor(scale))
    with torch.no_grad():
        plan = late_plan(engine.net(data.train.x)[:, 0], data.train.y)
    return timed(lambda: engine.step(plan), seconds)


def pack_time(specs, data, shift, scales, seconds: float) -> tuple[float, Plan]:  # noqa: ANN001
    """Seconds per run-step of a pack of len(specs) runs, and the plan it stepped."""
    pack: Pack = stack_runs([Member(s) for s in specs], [None] * len(specs), data)
    if shift:  # late: every run from the seed-0 state, each with its own violated share
        for p in pack.params:
            p.copy_(p[0].expand_as(p))
        make_late(pack.params, shift, scales)
    plan = late_plan(pack.forward(data.train.x)[0], pack.y)
    return timed(lambda: pack.step(plan), seconds) / len(specs), plan


def matmul_peak(seconds: float) -> float:
    """FLOP/s of a 2048 x 2048 float64 matmul on this thread: the CPU's practical peak."""
    a = torch.randn(2048, 2048, dtype=torch.float64)
    return 2 * 2048**3 / timed(lambda: a @ a, seconds)


def step_flops(spec, plan: Plan, n: int, d_in: int = 10) -> float:  # noqa: ANN001
    """The arithmetic of one run's step: 2 flops per multiply-add of a forward through n
    points, three times over (forward, d weight, d input) for the rows back-propagated,
    plus the forward over all n that finds the violators in a violator step."""
    widths = [d_in, *spec.arch.layer_widths(spec.width), 1]
    per_point = 2 * sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    if plan.capacity is None:
        return 3 * per_point * n
    return per_point * n + 3 * per_point * plan.capacity


def bmm_time(specs, data, shift, scales, seconds: float) -> float:  # noqa: ANN001
    """Seconds per run-step of the pack step's matmuls alone (3 per layer, 2 for the
    first) on the rows the step back-propagates, plus the forward that finds them."""
    pack: Pack = stack_runs([Member(s) for s in specs], [None] * len(specs), data)
    if shift:
        for p in pack.params:
            p.copy_(p[0].expand_as(p))
        make_late(pack.params, shift, scales)
    plan = late_plan(pack.forward(data.train.x)[0], pack.y)
    rows = data.train.x[: plan.capacity] if plan.capacity is not None else data.train.x
    x_rows = rows.expand(len(specs), *rows.shape).contiguous()
    _, inputs = pack.forward(x_rows)
    weights = pack.params[::2]
    outs = [torch.empty(len(specs), len(rows), w.shape[1], dtype=w.dtype) for w in weights]

    def matmuls() -> None:
        if plan.capacity is not None:
            pack.forward(data.train.x)  # the forward that finds the violators
        for w, h, out in zip(weights, inputs, outs, strict=True):
            torch.bmm(h, w.transpose(1, 2), out=out)  # forward
            torch.bmm(out.transpose(1, 2), h)  # d weight
        for w, out in zip(weights[1:], outs[1:], strict=True):
            torch.bmm(out, w)  # d input

    return timed(matmuls, seconds) / len(specs)


def bench_width(h: float, pack_size: int, data: Dataset, seconds: float, peak: float) -> None:
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
        phased = Dataset(type(data.train)(x, y, data.train.index), data.test)
        t_authors = authors_time(spec, x, y, shift_now, scale, seconds)
        t_module = single_time(spec, phased, shift_now, scale, seconds)
        t_one, _ = pack_time(specs[:1], phased, shift_now, scales[:1], seconds)
        row = f"h={h:<4g} {phase:<5}  authors {t_authors * 1e3:7.3f}"
        row += f"   module {t_module * 1e3:7.3f} ({t_authors / t_module:4.2f}x)"
        row += f"   one {t_one * 1e3:7.3f} ({t_authors / t_one:4.2f}x)"
        if pack_size > 1:
            t_pack, plan = pack_time(specs, phased, shift_now, scales, seconds)
            t_bmm = bmm_time(specs, phased, shift_now, scales, seconds)
            rate = step_flops(spec, plan, len(x)) / t_pack
            row += f"   pack of {pack_size} {t_pack * 1e3:7.3f} ({t_authors / t_pack:4.2f}x)"
            row += f"   bmm {t_bmm * 1e3:7.3f} (pack at {t_bmm / t_pack:4.2f} of it)"
            row += f"   {rate / 1e9:5.2f} GFLOP/s = {rate / peak:4.1%} of the matmul peak"
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
    peak = matmul_peak(args.seconds)
    print(f"P = {len(data.train)}, d = 10, L = 5, float64, 1 thread; ms per run-step")
    print(f"float64 matmul peak (2048 x 2048, this thread): {peak / 1e9:.1f} GFLOP/s")
    for h in args.widths:
        packed = args.force_pack or auto_pack_size(h, 5, len(data.train), gpu=False) > 1
        bench_width(h, args.pack if packed else 1, data, args.seconds, peak)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"peak RSS of this process (a worker's work, P = {len(data.train)}): {peak:.2f} GiB")


if __name__ == "__main__":
    main()
