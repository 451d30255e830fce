"""Train one run: a RunSpec and tensors in, outputs and metrics out. No files, no globals.

An FC net trained full batch (the paper's setup, `workers.pack.packable`) is a pack of
one: the same step, optimizer and checkpoint as in a pack of twenty. Any other net (a
CNN, a user's module, mini-batch or cross-entropy training) is a torch module with torch's
fused Adam, stepped by `Solo` in the same loop (`workers.loop`), with the same stop rule,
kinds of step and checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from schemas.run import RunSpec
from workers.data import Dataset
from workers.loop import (
    Callbacks,
    Member,
    Plan,
    member,
    resumed_plan,
    run_loop,
    take_violators,
)
from workers.pack import packable, train_pack
from workers.train import (
    DTYPES,
    RunResult,
    TrainState,
    build_model,
    hinge_terms,
    loss_value,
    make_optimizer,
    measure,
    minibatch,
    squeeze_output,
    test_error,
    violator_only,
    violators,
)


class Solo:
    """One run as a torch module and optimizer: the loop's engine of one row."""

    def __init__(self, m: Member, data: Dataset, resume: TrainState | None) -> None:
        spec = m.spec
        self.members = [m]
        self.data = data
        dtype = DTYPES[spec.training.dtype]
        self.net = build_model(spec, data.train.x.shape[1]).to(data.train.x.device, dtype)
        self.optimizer = make_optimizer(spec, self.net)
        self.batches = torch.Generator().manual_seed(spec.seed)
        if resume is not None:
            self.net.load_state_dict(resume.model)
            self.optimizer.load_state_dict(resume.optimizer)
            self.batches.set_state(resume.rng)
        self.sparse = violator_only(spec, len(data.train))

    def step(self, plan: Plan) -> torch.Tensor | None:
        loss, counts = self.loss(plan)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return counts

    def loss(self, plan: Plan) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss of one step with a graph to back-propagate and the violator counts (1,)
        at these weights (None for steps that count none: `workers.loop`)."""
        t = self.members[0].spec.training
        train = self.data.train
        counts = None
        if not self.sparse:  # mini-batch, cross-entropy or a batch-mixing module
            x, y = minibatch(train, t.batch_size, self.batches)
            loss = loss_value(t.loss, squeeze_output(self.net, x), y, t.margin)
        elif plan.capacity is None:
            f = squeeze_output(self.net, train.x)
            counts = violators(f.detach(), train.y, t.margin).sum()[None]
            loss = hinge_terms(t.loss, f, train.y, t.margin).sum() / len(train)
        else:
            with torch.no_grad():
                violated = violators(squeeze_output(self.net, train.x), train.y, t.margin)
            order, real, counts = take_violators(violated[None], plan.capacity)
            pick = order[0]  # (C,): the violators, then padding masked out of the loss
            f = squeeze_output(self.net, train.x[pick])
            terms = hinge_terms(t.loss, f, train.y[pick], t.margin) * real[0]
            loss = terms.sum() / len(train)
        return loss, counts

    def measure(self, data: Dataset) -> list[dict[str, float]]:
        spec = self.members[0].spec
        return [
            {**measure(self.net, data.train, spec), "test_error": test_error(self.net, data.test)}
        ]

    def model(self, row: int) -> torch.nn.Module:
        return self.net

    def state(self, row: int, wall_s: float, plan: Plan) -> TrainState:
        m = self.members[0]
        return TrainState(  # copies: the callback may keep the state while training goes on
            m.step,
            {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            copy.deepcopy(self.optimizer.state_dict()),
            self.batches.get_state(),
            [dict(t) for t in m.trace],
            list(m.snapshots),
            wall_s,
            plan.dense,
            plan.capacity,
        )

    def keep(self, rows: list[int]) -> None:
        self.members = [self.members[i] for i in rows]

    def save_point(self) -> Any:
        weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        return weights, copy.deepcopy(self.optimizer.state_dict())

    def roll_back(self, point: Any) -> None:
        weights, optimizer = point
        self.net.load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer)


def train(
    spec: RunSpec,
    data: Dataset,
    *,
    device: torch.device | str = "cpu",
    resume: TrainState | None = None,
    save: Callable[[TrainState], None] | None = None,
) -> RunResult:
    """Train `spec` on `data` (already on `device`, in the run's dtype) to the stop rule;
    a diverging run raises FloatingPointError."""
    results: list[RunResult] = []

    def done(_: RunSpec, result: RunResult) -> None:
        results.append(result)

    def saved(_: RunSpec, state: TrainState) -> None:
        assert save is not None
        save(state)

    if packable(spec):
        failures: list[Exception] = []
        train_pack(
            [spec],
            data,
            device=device,
            resumes=[resume],
            save=saved if save is not None else None,
            done=done,
            failed=lambda _, exc: failures.append(exc),
        )
        if failures:
            raise failures[0]
        return results[0]
    engine = Solo(member(spec, resume), data, resume)
    plan = resumed_plan([resume], len(data.train))
    calls = Callbacks(saved if save is not None else None, done)
    run_loop(engine, data, plan, str(device), calls)
    return results[0]
