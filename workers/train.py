"""What a training run is: its state, loss, measurements, net and result. No files, no globals.

DESIGN.md section 1: full-batch Adam (or SGD) on the hinge loss, stop as soon as every
constraint Delta_mu = margin - y_mu f(x_mu) is satisfied (Delta <= delta_tol), checked at
log-spaced measurement steps and every 1000 steps, or at max_steps. The loop that does it,
for one run or a pack, is `workers.loop`; `workers.trainer.train` trains one run, and
`workers.pack.train_pack` several FC nets at once. Checkpointing is a callback, so the
caller decides where (and whether) state is stored.

Violator-only steps: a hinge loss has no gradient on a point with Delta <= 0, so a
full-batch hinge step may find the violators (Delta > 0) with a forward pass without a
graph and back-propagate through those only, still dividing by P (`violator_only` says
when that is exact). Late in training a few dozen of 10,000 points remain and most of the
step's work disappears.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from schemas.grid import IMAGE_SHAPES
from schemas.run import RunSpec
from workers.data import Dataset, Split
from workers.models import build_cnn, build_fc, evaluating, kept_buffers

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class TrainState:
    """Everything needed to continue a run bit for bit (saved as a checkpoint)."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: torch.Tensor  # state of the mini-batch generator
    trace: list[dict[str, float]]
    snapshots: list[dict[str, Any]]
    wall_s: float
    # The next interval's kind of step: dense (all P points) or violators only. The two
    # sum the gradient in another order, so a resume must take the steps it would have
    # taken (checkpoints written before this field resume dense, as they always did).
    dense: bool = True
    # A violator step's rows per run (workers.loop.Plan), when `dense` is False.
    capacity: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainState:
        return cls(**raw)


@dataclass
class Outputs:
    """f on one split at one step, in the split's sample order: f (n,) or (n, C), and
    ||grad_x f|| (n,) where computed."""

    split: str
    step: int
    f: torch.Tensor
    grad_norm: torch.Tensor | None = None


@dataclass
class RunResult:
    outputs: list[Outputs]
    metrics: dict[str, Any]
    trace: list[dict[str, float]] = field(default_factory=list)
    weights: dict[str, torch.Tensor] | None = None  # the final state_dict, on the CPU


def measurement_steps(max_steps: int) -> set[int]:
    """Steps at which the stop rule is checked and the trace recorded: about 20 log-spaced
    steps per decade, every 1000th step, and the last one."""
    steps = {0, max_steps}
    steps.update(range(0, max_steps + 1, 1000))
    k = 0
    while (s := int(10 ** (k / 20))) <= max_steps:
        steps.add(s)
        k += 1
    return steps


def deltas(f: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """Delta_mu = margin - y_mu f(x_mu) for one output (n,); for C outputs,
    margin - (f_y - f_c) for every wrong class c, shape (n, C-1)."""
    if f.ndim == 1:
        return margin - y * f
    true = f.gather(1, y[:, None])
    others = torch.ones_like(f, dtype=torch.bool).scatter_(1, y[:, None], False)
    return (margin - (true - f))[others].view(len(f), -1)


def loss_value(name: str, f: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    if name == "cross_entropy":
        if f.ndim == 1:
            return F.softplus(-y * f).mean()
        return F.cross_entropy(f, y)
    delta = deltas(f, y, margin)
    per_sample = torch.relu(delta) if name == "hinge" else 0.5 * torch.relu(delta) ** 2
    return per_sample.flatten(1).sum(1).mean() if f.ndim > 1 else per_sample.mean()


def hinge_terms(name: str, f: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """A hinge loss's term of each sample (n,), summed over the wrong classes for C outputs
    (the loss is their mean)."""
    delta = deltas(f, y, margin)
    per_sample = torch.relu(delta) if name == "hinge" else 0.5 * torch.relu(delta) ** 2
    return per_sample.sum(1) if per_sample.ndim > 1 else per_sample


def violators(f: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """Where the hinge has a gradient (n,) bool: Delta > 0 (for C outputs, any class's).
    Strictly 0, not delta_tol: a point at 0 < Delta <= delta_tol still has a (tiny)
    gradient, and leaving it out would change the step."""
    delta = deltas(f, y, margin)
    return delta > 0 if delta.ndim == 1 else (delta > 0).any(1)


def violator_only(spec: RunSpec, n_train: int) -> bool:
    """Whether a step may back-propagate through the violators only: hinge losses, full
    batch, and a net whose output for a sample does not depend on the rest of the batch (a
    module with batch norm or dropout trains with plain full-batch steps: workers.builders)."""
    t = spec.training
    full_batch = t.batch_size is None or t.batch_size >= n_train
    mixing = spec.arch.kind == "module" and spec.module_facts.batch_mixing is not None
    return t.loss != "cross_entropy" and full_batch and not mixing


def errors(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 where a sample is misclassified: y f <= 0, or argmax f != y."""
    if f.ndim == 1:
        return (y * f <= 0).to(f.dtype)
    return (f.argmax(1) != y).to(f.dtype)


def squeeze_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[:, 0] if out.shape[1] == 1 else out


def measure(model: nn.Module, data: Split, spec: RunSpec) -> dict[str, float]:
    """Loss, unsatisfied constraints N_Delta, largest Delta, error and ||f|| on a set, in
    the mode the loss sees (train); a measurement is no training forward, so a module's
    buffers (batch norm's running statistics) are left as they were."""
    with torch.no_grad(), kept_buffers(model):
        return measure_outputs(squeeze_output(model, data.x), data.y, spec)


def test_error(model: nn.Module, test: Split) -> float:
    """The error on the test set now: the trace's early-stopping curve (paper's Fig. 2), in
    the mode of the final outputs (a module's batch norm in eval mode)."""
    with torch.no_grad(), evaluating(model):
        return errors(squeeze_output(model, test.x), test.y).mean().item()


def measure_outputs(f: torch.Tensor, y: torch.Tensor, spec: RunSpec) -> dict[str, float]:
    """`measure` from the outputs f of the set (n,) or (n, C)."""
    delta = deltas(f, y, spec.training.margin)
    return {
        "loss": loss_value(spec.training.loss, f, y, spec.training.margin).item(),
        "n_unsat": int((delta > spec.training.delta_tol).sum().item()),
        "max_delta": delta.max().item(),
        "train_error": errors(f, y).mean().item(),
        "f_norm": f.pow(2).mean().sqrt().item(),
    }


def input_gradient_norms(model: nn.Module, x: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """||grad_x f(x)|| per sample (n,); for C outputs, the Frobenius norm of the Jacobian.
    Samples are independent, so the gradient of sum_mu f_c(x_mu) holds every row at once;
    slices of `chunk` samples bound the memory of the graph (a wide CNN on 10k images)."""
    return torch.cat([_gradient_norms(model, part) for part in x.split(chunk)])


def _gradient_norms(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    f = model(x)  # (n, C)
    squares = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for c in range(f.shape[1]):
        (grad,) = torch.autograd.grad(f[:, c].sum(), x, retain_graph=c + 1 < f.shape[1])
        squares += grad.flatten(1).pow(2).sum(1)
    return squares.sqrt()


def evaluate(model: nn.Module, data: Split, split: str, step: int) -> Outputs:
    with torch.no_grad():
        f = squeeze_output(model, data.x)
    grad = input_gradient_norms(model, data.x) if split == "test" else None
    return Outputs(split, step, f.cpu(), None if grad is None else grad.cpu())


def build_model(spec: RunSpec, d_in: int) -> nn.Module:
    """The run's net; d_in is the input width (FC) or the image channels (CNN)."""
    net: nn.Module
    if spec.arch.kind == "module":
        from workers.builders import build_module  # the user's code: only for their runs

        net = build_module(spec.arch, spec.width, d_in, spec.n_outputs, spec.seed)
    elif spec.arch.kind == "cnn":
        side = IMAGE_SHAPES[spec.dataset.name][1]
        net = build_cnn(spec.arch, spec.width, d_in, spec.n_outputs, spec.seed, side)
    else:
        net = build_fc(spec.arch, spec.width, d_in, spec.n_outputs, spec.seed)
    return MinusInit(net) if spec.training.subtract_init else net


class MinusInit(nn.Module):
    """f(x) = net(x) - net_0(x): the net minus a frozen copy of itself at initialisation,
    so that f = 0 at step 0 (the paper's footnote 5)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.init = copy.deepcopy(net).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) - self.init(x)


def make_optimizer(spec: RunSpec, model: nn.Module) -> torch.optim.Optimizer:
    lr = spec.training.learning_rate(spec.width)
    params = [p for p in model.parameters() if p.requires_grad]  # not a frozen init copy
    if spec.training.optimizer == "adam":
        # fused: one kernel for every tensor (1.2x faster per step: bench/bench_train_step.py)
        return torch.optim.Adam(params, lr=lr, eps=spec.training.adam_eps, fused=True)
    return torch.optim.SGD(params, lr=lr)


class CheckpointClock:
    """Says when to save: every `every_steps` steps, or `every_s` seconds after the last save."""

    def __init__(self, every_steps: int | None, every_s: float) -> None:
        self.every_steps = every_steps
        self.every_s = every_s
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if self.every_steps is not None and step % self.every_steps == 0:
            return True
        return time.monotonic() - self.last >= self.every_s

    def saved(self) -> None:
        self.last = time.monotonic()


def check_finite(last: dict[str, float], step: int) -> None:
    if not math.isfinite(last["loss"]):
        raise FloatingPointError(
            f"loss is {last['loss']} at step {step}: training diverged; lower the "
            "learning rate (lr0 / lr_max) or use float64"
        )


def finish(
    spec: RunSpec,
    model: nn.Module,
    data: Dataset,
    step: int,
    last: dict[str, float],
    snapshots: list[dict[str, Any]],
    trace: list[dict[str, float]],
    wall_s: float,
    device: str,
    resumed_from: int,
) -> RunResult:
    """A stopped run's result: final outputs on both sets, metrics from its last measurement."""
    t = spec.training
    train_set = data.train
    with evaluating(model):
        outputs = [
            evaluate(model, train_set, "train", step),
            evaluate(model, data.test, "test", step),
        ]
    test = outputs[1]
    metrics = {
        "steps": step,
        "converged": last["n_unsat"] == 0,
        "train_loss": last["loss"],
        "n_unsat": last["n_unsat"],
        "max_delta": last["max_delta"],
        "train_error": last["train_error"],
        "test_error": errors(test.f, data.test.y.cpu()).mean().item(),
        "f_norm": test.f.pow(2).mean().sqrt().item(),
        "grad_norm": test.grad_norm.pow(2).mean().sqrt().item()
        if test.grad_norm is not None
        else math.nan,
        "lr": t.learning_rate(spec.width),
        "wall_s": wall_s,
        "device": device,
        "resumed_from": resumed_from,
    }
    # a snapshot at the final step would repeat the final outputs: keep those only
    earlier = [s for s in snapshots if s["step"] != step]
    return RunResult(
        outputs=_restore_snapshots(earlier) + outputs,
        metrics=metrics,
        trace=trace,
        weights=_cpu(model.state_dict()) if spec.checkpoint.keep_models else None,
    )


def minibatch(
    data: Split, batch_size: int | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    if batch_size is None or batch_size >= len(data):
        return data.x, data.y
    pick = torch.randperm(len(data), generator=generator)[:batch_size].to(data.x.device)
    return data.x[pick], data.y[pick]


def snapshot(model: nn.Module, data: Dataset, step: int) -> list[dict[str, Any]]:
    """Outputs at an intermediate step, kept as plain tensors so checkpoints can hold them."""
    rows = []
    for split, part in (("train", data.train), ("test", data.test)):
        with torch.no_grad(), evaluating(model):
            rows.append({"split": split, "step": step, "f": squeeze_output(model, part.x).cpu()})
    return rows


def _restore_snapshots(snapshots: list[dict[str, Any]]) -> list[Outputs]:
    return [Outputs(s["split"], s["step"], s["f"]) for s in snapshots]


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}
