"""Train a pack: several runs of one FC (arch, width) as one batched model. No files.

Small nets waste the machine: a step of a width-8 net is a few dozen tiny kernels. A pack
stacks the weights of R runs (the seeds of one width) along a leading run dimension and
steps them together with batched matmuls, so one kernel does the work of R. Everything a
run owns stays its own:
  - its init (each run's net is built by `build_model`, exactly as when trained alone),
  - its Adam state (moments and step count per run, Adam's math vectorised over runs),
  - its stop: a run that meets the stop rule leaves the batch (the batch is compacted), so
    its weights and Adam moments never change again; Adam would otherwise keep moving a net
    whose gradient is zero,
  - its checkpoint, trace, snapshots and result, in the formats of `workers.train`, so a
    run's checkpoint resumes in a pack or alone.
Steps are full-batch and violator-only as in `workers.train`: each run's violators are
gathered into a (R, V_max, d) batch, padded rows masked out of the loss.

Packs are for FC nets trained full batch (`packable`); CNNs and mini-batch runs train alone.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from schemas.grid import FCArch
from schemas.run import RunSpec
from workers.data import Dataset, Split
from workers.models import FC
from workers.train import (
    DENSE_FRACTION,
    CheckpointClock,
    RunResult,
    TrainState,
    build_model,
    check_finite,
    finish,
    make_optimizer,
    measure_outputs,
    measurement_steps,
    snapshot,
)

BETA1, BETA2 = 0.9, 0.999  # torch.optim.Adam's defaults, which make_optimizer uses


def packable(spec: RunSpec) -> bool:
    """FC nets with one output trained full batch, without a frozen init copy: what
    `train_pack` handles (the paper's FC setup)."""
    t = spec.training
    full_batch = t.batch_size is None or t.batch_size >= spec.dataset.train_size
    return spec.arch.kind == "fc" and spec.n_outputs == 1 and full_batch and not t.subtract_init


def pack_key(spec: RunSpec) -> str:
    """Runs with the same key may share a pack: they differ by their seed only."""
    return spec.model_dump_json(exclude={"seed"})


@dataclass
class Member:
    """One run of the pack and the bookkeeping that is its own."""

    spec: RunSpec
    step: int = 0
    trace: list[dict[str, float]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    rng: torch.Tensor | None = None
    wall_before: float = 0.0
    resumed_from: int = 0
    last: dict[str, float] | None = None


class Pack:
    """The stacked state of the runs still training: params [W0, b0, W1, b1, ...] with
    W_l (R, out, in) and b_l (R, out), Adam moments of the same shapes, steps t (R,)."""

    def __init__(self, members: list[Member], params: list[torch.Tensor], adam: dict) -> None:
        self.members = members
        self.params = [p.detach().requires_grad_(True) for p in params]
        self.exp_avg: list[torch.Tensor] = adam["exp_avg"]
        self.exp_avg_sq: list[torch.Tensor] = adam["exp_avg_sq"]
        self.adam_steps: torch.Tensor = adam["step"]  # (R,) float64, Adam's t per run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f of every run (R, n): x (n, d) shared by the runs, or (R, n, d) per run."""
        h = x.expand(len(self.members), *x.shape) if x.ndim == 2 else x
        n_layers = len(self.params) // 2
        for i in range(n_layers):
            weight, bias = self.params[2 * i], self.params[2 * i + 1]
            h = torch.baddbmm(bias[:, None, :], h, weight.transpose(1, 2))  # (R, n, out)
            if i + 1 < n_layers:
                h = torch.relu(h)
        return h[..., 0]  # one output

    def keep(self, rows: list[int]) -> None:
        """Compact the batch to the runs at `rows` (the others have stopped)."""
        self.members = [self.members[i] for i in rows]
        index = torch.tensor(rows, dtype=torch.long, device=self.params[0].device)
        self.params = [p.detach()[index].requires_grad_(True) for p in self.params]
        self.exp_avg = [m[index] for m in self.exp_avg]
        self.exp_avg_sq = [v[index] for v in self.exp_avg_sq]
        self.adam_steps = self.adam_steps[index.cpu()]


def stack_runs(members: list[Member], resumes: list[TrainState | None], data: Dataset) -> Pack:
    """The pack of `members`, each built by `build_model` from its seed (or from its
    checkpoint, loaded through a real model and optimizer so the formats stay torch's)."""
    device, dtype = data.train.x.device, data.train.x.dtype
    params, exp_avg, exp_avg_sq, steps = [], [], [], []
    for member, resume in zip(members, resumes, strict=True):
        model = build_model(member.spec, data.train.x.shape[1]).to(device=device, dtype=dtype)
        optimizer = make_optimizer(member.spec, model)
        if resume is not None:
            model.load_state_dict(resume.model)
            optimizer.load_state_dict(resume.optimizer)
        run_params = list(model.parameters())
        params.append([p.detach() for p in run_params])
        state = [optimizer.state.get(p, {}) for p in run_params]  # {} before a first step
        exp_avg.append(
            [s.get("exp_avg", torch.zeros_like(p)) for s, p in zip(state, run_params, strict=True)]
        )
        exp_avg_sq.append(
            [
                s.get("exp_avg_sq", torch.zeros_like(p))
                for s, p in zip(state, run_params, strict=True)
            ]
        )
        steps.append(float(state[0]["step"]) if "step" in state[0] else 0.0)

    def stacked(per_run: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return [torch.stack(tensors) for tensors in zip(*per_run, strict=True)]

    adam = {
        "exp_avg": stacked(exp_avg),
        "exp_avg_sq": stacked(exp_avg_sq),
        "step": torch.tensor(steps, dtype=torch.float64),
    }
    return Pack(members, stacked(params), adam)


def run_model(pack: Pack, row: int, d_in: int) -> FC:
    """The net of the run at `row`, as a plain FC module holding a copy of its weights."""
    spec = pack.members[row].spec
    assert isinstance(spec.arch, FCArch)  # packable
    model = FC(d_in, spec.arch.layer_widths(spec.width), spec.n_outputs)
    model = model.to(device=pack.params[0].device, dtype=pack.params[0].dtype)
    with torch.no_grad():
        for mine, stacked in zip(model.parameters(), pack.params, strict=True):
            mine.copy_(stacked[row])
    return model


def run_state(pack: Pack, row: int, d_in: int, wall_s: float) -> TrainState:
    """The checkpoint of the run at `row`, exactly as `workers.train.train` saves one."""
    member = pack.members[row]
    model = run_model(pack, row, d_in)
    optimizer = make_optimizer(member.spec, model)
    if member.spec.training.optimizer == "adam" and pack.adam_steps[row] > 0:
        for i, p in enumerate(model.parameters()):
            optimizer.state[p] = {
                # fused Adam keeps its step as a float32 tensor on the param's device
                "step": torch.tensor(
                    float(pack.adam_steps[row]), dtype=torch.float32, device=p.device
                ),
                "exp_avg": pack.exp_avg[i][row].clone(),
                "exp_avg_sq": pack.exp_avg_sq[i][row].clone(),
            }
    return TrainState(
        member.step,
        {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        copy.deepcopy(optimizer.state_dict()),
        member.rng if member.rng is not None else torch.Generator().get_state(),
        [dict(t) for t in member.trace],
        list(member.snapshots),
        wall_s,
    )


def pack_step_loss(pack: Pack, data: Split, f: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """The summed loss of every run (their params are disjoint, so its gradient is each
    run's own) and the largest fraction of violators of a run.

    f (R, P) of the current weights, computed without a graph: back-propagate through each
    run's violators only, gathered into (R, V_max, d) and padded (padding masked out of the
    loss). f None: one forward with a graph over all P points (early in training)."""
    spec = pack.members[0].spec
    t, n = spec.training, len(data)
    if f is None:
        f = pack.forward(data.x)
        violated = _violated(f.detach(), data.y, t.margin)
        return _hinge(t.loss, f, data.y, t.margin).sum() / n, _max_fraction(violated)
    violated = _violated(f, data.y, t.margin)  # (R, P)
    counts = violated.sum(1)
    width = int(counts.max())
    # violators first in each row (a stable sort keeps their order), then padding
    order = torch.argsort((~violated).to(torch.int8), dim=1, stable=True)[:, :width]
    real = torch.arange(width, device=f.device)[None, :] < counts[:, None]  # (R, V)
    fv = pack.forward(data.x[order])  # (R, V)
    terms = _hinge(t.loss, fv, data.y[order], t.margin) * real
    return terms.sum() / n, width / n


def _violated(f: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """(R, P) bool: Delta > 0, as `workers.train.violators`."""
    return margin - y * f > 0


def _hinge(name: str, f: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-sample hinge terms (R, n), as `workers.train.hinge_sum` sums them."""
    delta = margin - y * f
    return torch.relu(delta) if name == "hinge" else 0.5 * torch.relu(delta) ** 2


def _max_fraction(violated: torch.Tensor) -> float:
    return violated.sum(1).max().item() / violated.shape[1]


def optimizer_step(pack: Pack) -> None:
    """One step of every run's optimizer, vectorised over runs: torch.optim.Adam's math
    (single-tensor form) with each run's own step count, or plain SGD."""
    t = pack.members[0].spec.training
    lr = t.learning_rate(pack.members[0].spec.width)
    with torch.no_grad():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in pack.params]
        if t.optimizer == "sgd":
            for p, g in zip(pack.params, grads, strict=True):
                p.add_(g, alpha=-lr)
            return
        pack.adam_steps += 1
        step_size = lr / (1 - BETA1**pack.adam_steps)  # (R,) float64
        bias2_sqrt = (1 - BETA2**pack.adam_steps).sqrt()
        for p, g, m, v in zip(pack.params, grads, pack.exp_avg, pack.exp_avg_sq, strict=True):
            shape = (-1,) + (1,) * (p.ndim - 1)
            m.lerp_(g, 1 - BETA1)
            v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
            denom = (v.sqrt() / bias2_sqrt.to(p).view(shape)).add_(t.adam_eps)
            p.sub_(step_size.to(p).view(shape) * (m / denom))


def pack_step(pack: Pack, data: Split, f: torch.Tensor | None) -> float:
    """One optimizer step of every run of the pack (f: as in pack_step_loss); returns the
    largest fraction of violators, which decides whether the next step goes dense."""
    loss, fraction = pack_step_loss(pack, data, f)
    for p in pack.params:
        p.grad = None
    loss.backward()
    optimizer_step(pack)
    return fraction


def train_pack(
    specs: list[RunSpec],
    data: Dataset,
    *,
    device: torch.device | str = "cpu",
    resumes: list[TrainState | None] | None = None,
    save: Callable[[RunSpec, TrainState], None] | None = None,
    done: Callable[[RunSpec, RunResult], None] | None = None,
    failed: Callable[[RunSpec, Exception], None] | None = None,
) -> None:
    """Train `specs` (one pack_key, packable) together to each run's stop rule. Each run
    is handed to `done` as it stops (or to `failed` if it diverges) and to `save` as its
    checkpoints fall due: the same results and states as `workers.train.train`, run by run.
    """
    started = time.monotonic()
    first = specs[0]
    assert all(packable(s) and pack_key(s) == pack_key(first) for s in specs), "not one pack"
    resumes = resumes if resumes is not None else [None] * len(specs)
    members = [_member(s, r) for s, r in zip(specs, resumes, strict=True)]
    pack = stack_runs(members, resumes, data)
    t, d_in = first.training, data.train.x.shape[1]
    checks = measurement_steps(t.max_steps)
    snapshot_at = set(t.snapshot_steps)
    clock = CheckpointClock(first.checkpoint.every_steps, first.checkpoint.every_s)
    dense = True
    while pack.members:
        f = None if dense else outputs(pack, data.train.x)
        stopped: list[int] = []
        for row, m in enumerate(pack.members):
            if m.step in snapshot_at and not any(s["step"] == m.step for s in m.snapshots):
                m.snapshots.extend(snapshot(run_model(pack, row, d_in), data, m.step))
            if m.step not in checks:
                continue
            f = outputs(pack, data.train.x) if f is None else f
            m.last = {"step": m.step, **measure_outputs(f[row], data.train.y, m.spec)}
            if not m.trace or m.trace[-1]["step"] != m.step:
                m.trace.append(m.last)
            try:
                check_finite(m.last, m.step)
            except FloatingPointError as exc:
                stopped.append(row)
                if failed is not None:
                    failed(m.spec, exc)
                continue
            if m.last["n_unsat"] == 0 or m.step >= t.max_steps:
                stopped.append(row)
                if done is not None:
                    wall = m.wall_before + time.monotonic() - started
                    model = run_model(pack, row, d_in)
                    args = (m.step, m.last, m.snapshots, m.trace, wall, str(device))
                    done(m.spec, finish(m.spec, model, data, *args, m.resumed_from))
        if stopped:
            rows = [r for r in range(len(pack.members)) if r not in stopped]
            if f is not None:
                f = f[rows]
            pack.keep(rows)
            if not pack.members:
                break
        dense = pack_step(pack, data.train, None if dense else f) > DENSE_FRACTION
        for m in pack.members:
            m.step += 1
        if save is not None and clock.due(pack.members[0].step):
            for row, m in enumerate(pack.members):
                save(m.spec, run_state(pack, row, d_in, m.wall_before + time.monotonic() - started))
            clock.saved()


def outputs(pack: Pack, x: torch.Tensor) -> torch.Tensor:
    """f (R, n) of every run, without a graph."""
    with torch.no_grad():
        return pack.forward(x)


def _member(spec: RunSpec, resume: TrainState | None) -> Member:
    if resume is None:
        return Member(spec, rng=torch.Generator().manual_seed(spec.seed).get_state())
    return Member(
        spec,
        step=resume.step,
        trace=list(resume.trace),
        snapshots=list(resume.snapshots),
        rng=resume.rng,
        wall_before=resume.wall_s,
        resumed_from=resume.step,
    )


def auto_pack_size(width: float, depth: int, train_size: int, gpu: bool) -> int:
    """The pack size `resources.pack: auto` gives one (arch, width).

    CPU (bench/bench_throughput.py, 1 thread): a step pays a fixed cost per kernel, so a
    pack wins while P * h is small (P = 1000, h = 8: a pack of 20 takes 0.55 ms per run-step,
    one run alone 2.3 ms); from P * h of about 50,000 on the work per element dominates and
    batched matmuls are no faster than one run's (P = 10,000, h = 16: slower), so those runs
    train alone. GPU (not measured here: no GPU was available): kernel-launch bound, so
    pack up to 20 runs. Either way a pack's activations (about 3 (R, P, h) float64 tensors
    per layer, kept for the backward) stay under 512 MiB."""
    if not gpu and train_size * width > 50_000:
        return 1
    per_run = 3 * train_size * width * depth * 8
    return max(1, min(20, int(512 * 2**20 // max(per_run, 1))))


def plan_tasks(specs: list[RunSpec], slots: int) -> list[list[RunSpec]]:
    """Split `specs` into tasks: packs of runs sharing a pack_key as `resources.pack` says,
    every other run alone. `slots`: how many tasks the cluster runs at once; an 'auto' pack
    is made no larger than keeps its width's share of those slots busy (4 seeds on 2 cores
    give 2 packs of 2, not 1 of 4). Runs are split evenly: 22 runs by 20 give 11 + 11."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        alone = spec.resources.pack == 1 or not packable(spec)
        groups.setdefault(spec.run_id if alone else pack_key(spec), []).append(spec)
    tasks = []
    for group in groups.values():
        first = group[0]
        size = first.resources.pack if first.resources.pack != "auto" else 1
        if first.resources.pack == "auto":
            gpu = first.resources.num_gpus > 0
            train_size = first.dataset.train_size
            size = auto_pack_size(first.width, first.arch.depth, train_size, gpu)
            share = math.ceil(max(1, slots) * len(group) / len(specs))  # tasks for this group
            size = min(size, math.ceil(len(group) / share))
        n_tasks = math.ceil(len(group) / size)
        tasks += [group[i::n_tasks] for i in range(n_tasks)]
    return tasks
