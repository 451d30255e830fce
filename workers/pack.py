"""Train a pack: several runs of one FC arch as one batched model. No files.

Small nets waste the machine: a step of a width-8 net is a few dozen tiny kernels. A pack
stacks the weights of R runs (seeds, and widths of one arch) along a leading run dimension
and steps them together with batched matmuls, so one kernel does the work of R. A narrower
run sits zero-padded in the widest one's shapes: a padded unit's weights and bias are 0, so
its ReLU is 0, its gradient is exactly 0 and Adam leaves it at 0 (m = v = 0). Everything a
run owns stays its own:
  - its init (each run's net is built by `build_model`, exactly as when trained alone),
  - its Adam state and learning rate (moments, step count and lr per run, Adam's math
    vectorised over runs),
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
    """Runs with the same key may share a pack: they differ by their width and seed only."""
    return spec.model_dump_json(exclude={"seed", "width"})


@dataclass
class Member:
    """One run of the pack and the bookkeeping that is its own."""

    spec: RunSpec
    shapes: list[torch.Size] = field(default_factory=list)  # its own params' shapes
    step: int = 0
    trace: list[dict[str, float]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    rng: torch.Tensor | None = None
    wall_before: float = 0.0
    resumed_from: int = 0
    last: dict[str, float] | None = None


class Pack:
    """The stacked state of the runs still training: params [W0, b0, W1, b1, ...] with
    W_l (R, out, in) and b_l (R, out) in the widest run's shapes (narrower runs
    zero-padded), Adam moments of the same shapes, steps t (R,) and learning rates (R,)."""

    def __init__(self, members: list[Member], params: list[torch.Tensor], adam: dict) -> None:
        self.members = members
        self.params = [p.detach().requires_grad_(True) for p in params]
        self.exp_avg: list[torch.Tensor] = adam["exp_avg"]
        self.exp_avg_sq: list[torch.Tensor] = adam["exp_avg_sq"]
        self.adam_steps: torch.Tensor = adam["step"]  # (R,) float64, Adam's t per run
        self.lr = torch.tensor(
            [m.spec.training.learning_rate(m.spec.width) for m in members], dtype=torch.float64
        )

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
        """Compact the batch to the runs at `rows` (the others have stopped), in the shapes
        of the widest run left (what is cut off is padding: zeros)."""
        self.members = [self.members[i] for i in rows]
        if not self.members:
            self.params, self.exp_avg, self.exp_avg_sq = [], [], []
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.params[0].device)
        cuts = [(slice(None), *_block(shape)) for shape in _widest(self.members)]

        def kept(stacked: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t[index][cut].contiguous() for t, cut in zip(stacked, cuts, strict=True)]

        self.params = [p.requires_grad_(True) for p in kept([p.detach() for p in self.params])]
        self.exp_avg = kept(self.exp_avg)
        self.exp_avg_sq = kept(self.exp_avg_sq)
        self.adam_steps = self.adam_steps[index.cpu()]
        self.lr = self.lr[index.cpu()]


def _block(shape: torch.Size) -> tuple[slice, ...]:
    """The slices of a padded tensor that hold a tensor of `shape` (its top-left block)."""
    return tuple(slice(0, n) for n in shape)


def _widest(members: list[Member]) -> list[torch.Size]:
    """Per param, the shape that holds every member's (the elementwise largest)."""
    return [
        torch.Size(max(sizes) for sizes in zip(*shapes, strict=True))
        for shapes in zip(*(m.shapes for m in members), strict=True)
    ]


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
        member.shapes = [p.shape for p in run_params]
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

    shapes = _widest(members)

    def stacked(per_run: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """Per param, the runs' tensors in one (R, *widest) tensor, zero-padded."""
        out = []
        for shape, tensors in zip(shapes, zip(*per_run, strict=True), strict=True):
            big = tensors[0].new_zeros((len(tensors), *shape))
            for row, tensor in enumerate(tensors):
                big[(row, *_block(tensor.shape))] = tensor
            out.append(big)
        return out

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
            mine.copy_(stacked[row][_block(mine.shape)])
    return model


def run_state(pack: Pack, row: int, d_in: int, wall_s: float, dense: bool = True) -> TrainState:
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
                "exp_avg": pack.exp_avg[i][row][_block(p.shape)].clone(),
                "exp_avg_sq": pack.exp_avg_sq[i][row][_block(p.shape)].clone(),
            }
    return TrainState(
        member.step,
        {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        copy.deepcopy(optimizer.state_dict()),
        member.rng if member.rng is not None else torch.Generator().get_state(),
        [dict(t) for t in member.trace],
        list(member.snapshots),
        wall_s,
        dense,
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
    (single-tensor form) with each run's own step count and learning rate, or plain SGD."""
    t = pack.members[0].spec.training
    with torch.no_grad():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in pack.params]
        if t.optimizer == "sgd":
            for p, g in zip(pack.params, grads, strict=True):
                p.sub_(g * _per_run(pack.lr, p))
            return
        pack.adam_steps += 1
        step_size = pack.lr / (1 - BETA1**pack.adam_steps)  # (R,) float64
        bias2_sqrt = (1 - BETA2**pack.adam_steps).sqrt()
        for p, g, m, v in zip(pack.params, grads, pack.exp_avg, pack.exp_avg_sq, strict=True):
            m.lerp_(g, 1 - BETA1)
            v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
            denom = (v.sqrt() / _per_run(bias2_sqrt, p)).add_(t.adam_eps)
            p.sub_(_per_run(step_size, p) * (m / denom))


def _per_run(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values (R,) as `like`'s dtype and device, shaped to broadcast over its run rows."""
    return values.to(like).view((-1,) + (1,) * (like.ndim - 1))


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
    # One kind of step for the whole pack: dense unless every run resumes past it.
    dense = any(r is None or r.dense for r in resumes)
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
                wall = m.wall_before + time.monotonic() - started
                save(m.spec, run_state(pack, row, d_in, wall, dense))
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
