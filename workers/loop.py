"""The training loop, once: the stop rule, the kind of step and the checkpoints of R runs.

A run alone and a pack of R runs go through `run_loop`; they differ in their engine (a
torch module and optimizer for one run, `workers.pack`'s stacked FC nets for R runs),
which knows how to take a step and hand out each run's net and state. The loop owns:
  - the stop rule (DESIGN.md section 1): a run is measured at `measurement_steps` and
    stops at the first with no unsatisfied constraint, or at max_steps;
  - the kind of step, decided at marks (measurement and snapshot steps) only. Between two
    boundaries every step has static shapes and never waits for the device (no `.item()`,
    no `nonzero()`): a dense step back-propagates through all P points; a violator step
    through `capacity` rows per run, its violators first (found by a forward without a
    graph) and padding after, masked out of the loss. A run's violators can outgrow the
    capacity within an interval; the step then records an overflow on the device, and at
    the boundary the loop rolls the interval back and takes it again a step at a time,
    an overflowing step dense (the gradient of a clipped batch would be wrong; a dense
    one is the same gradient summed in another order);
  - boundaries: marks and checkpoints. A checkpoint is taken at a boundary and holds the
    kind of step in force, which a checkpoint does not change: a resumed run takes the
    steps the uninterrupted one took, bit for bit, wherever its checkpoints fell.
One host sync per boundary reads the overflow flag and the violator count that sets the
next capacity; a measurement reads its numbers too.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from schemas.run import RunSpec
from workers.data import Dataset
from workers.train import (
    CheckpointClock,
    RunResult,
    TrainState,
    check_finite,
    finish,
    measurement_steps,
    snapshot,
)

# Above this fraction of violators, one forward/backward over all P points is cheaper than
# a forward without a graph plus a forward/backward over the violators (1 + 3v < 3 at most,
# less the cost of gathering them): bench/bench_throughput.py.
DENSE_FRACTION = 0.5
# A violator step's capacity: twice the largest count at the boundary, plus this margin
# (violators come back while a run trains; an overflow costs the interval again, dense).
CAPACITY_MARGIN = 16


@dataclass(frozen=True)
class Plan:
    """The steps of one interval: dense (capacity None) or `capacity` rows per run."""

    capacity: int | None = None

    @property
    def dense(self) -> bool:
        return self.capacity is None


DENSE = Plan()


def plan_after(most_violated: int, n: int) -> Plan:
    """The next interval's steps from the largest violator count of a run (of n points)."""
    if most_violated > DENSE_FRACTION * n:
        return DENSE
    return Plan(min(n, 2 * most_violated + CAPACITY_MARGIN))


def resumed_plan(resumes: list[TrainState | None], n: int) -> Plan:
    """The first interval's steps: dense unless every run resumes past it (a checkpoint
    written before capacities existed resumes with room for every point)."""
    if any(r is None or r.dense for r in resumes):
        return DENSE
    return Plan(max(r.capacity or n for r in resumes if r is not None))


def take_violators(
    violated: torch.Tensor, capacity: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Static-shape picks from violated (R, P) bool: order (R, capacity) holds each run's
    violators first (in index order: a stable sort) then other points, real (R, capacity)
    marks the violators, counts (R,) how many each run has (more than `capacity`: the
    step's overflow)."""
    counts = violated.sum(1)
    order = torch.argsort((~violated).to(torch.int8), dim=1, stable=True)[:, :capacity]
    real = torch.arange(capacity, device=violated.device)[None, :] < counts[:, None]
    return order, real, counts


@dataclass
class Member:
    """One run of the loop and the bookkeeping that is its own."""

    spec: RunSpec
    shapes: list[torch.Size] = field(default_factory=list)  # its own params' shapes
    step: int = 0
    trace: list[dict[str, float]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    rng: torch.Tensor | None = None
    wall_before: float = 0.0
    resumed_from: int = 0
    last: dict[str, float] | None = None


def member(spec: RunSpec, resume: TrainState | None) -> Member:
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


class Engine(Protocol):
    """What the loop needs of the R runs it trains (rows = positions in `members`)."""

    members: list[Member]

    def step(self, plan: Plan) -> torch.Tensor | None:
        """One optimizer step of every run: the violator counts (R,) at the weights before
        the step, on the device (more than `plan.capacity`: an overflow); None for a step
        that counts none."""
        ...

    def measure(self, data: Dataset) -> list[dict[str, float]]:
        """Each run's measurement: `workers.train.measure` and the trace's test error."""
        ...

    def model(self, row: int) -> nn.Module:
        """The run's net (its own copy or the live module)."""
        ...

    def state(self, row: int, wall_s: float, plan: Plan) -> TrainState:
        """The run's checkpoint, with the plan in force (a checkpoint does not change it)."""
        ...

    def keep(self, rows: list[int]) -> None:
        """Go on with the runs at `rows` only (the others have stopped)."""
        ...

    def save_point(self) -> Any:
        """A copy of every run's weights and optimizer state, for `roll_back`."""
        ...

    def roll_back(self, point: Any) -> None: ...


@dataclass
class Callbacks:
    save: Callable[[RunSpec, TrainState], None] | None = None
    done: Callable[[RunSpec, RunResult], None] | None = None
    failed: Callable[[RunSpec, Exception], None] | None = None


def run_loop(engine: Engine, data: Dataset, plan: Plan, device: str, calls: Callbacks) -> None:
    """Train the engine's runs to each one's stop rule; each is handed to `done` as it
    stops (or to `failed` if it diverges) and to `save` as its checkpoints fall due."""
    started = time.monotonic()
    first = engine.members[0].spec
    t = first.training
    checks = measurement_steps(t.max_steps)
    snapshot_at = set(t.snapshot_steps)
    marks = sorted(checks | snapshot_at)
    clock = CheckpointClock(first.checkpoint.every_steps, first.checkpoint.every_s)
    n = len(data.train)
    while True:
        _boundary(engine, data, checks, snapshot_at, started, device, calls)
        if not engine.members:
            return
        steps = min(marks[bisect.bisect_right(marks, m.step)] - m.step for m in engine.members)
        taken, most = _interval(engine, plan, steps, clock if calls.save else None)
        for m in engine.members:
            m.step += taken
        if taken == steps and most is not None:  # at a mark: the next kind of step
            plan = plan_after(most, n)
        if calls.save is not None and clock.due(engine.members[0].step):
            for row, m in enumerate(engine.members):
                wall = m.wall_before + time.monotonic() - started
                calls.save(m.spec, engine.state(row, wall, plan))
            clock.saved()


def _interval(
    engine: Engine, plan: Plan, steps: int, clock: CheckpointClock | None
) -> tuple[int, int | None]:
    """Up to `steps` steps of `plan` (fewer when a checkpoint falls due); the steps taken
    and the largest violator count of a run at the last one (None: steps that count
    none, mini-batch or cross-entropy)."""
    point = None if plan.dense else engine.save_point()
    start = engine.members[0].step
    counts, overflow = None, None
    taken = 0
    while taken < steps:
        counts = engine.step(plan)
        if counts is not None and plan.capacity is not None:  # a dense step cannot overflow
            over = counts.max() > plan.capacity
            overflow = over if overflow is None else overflow | over
        taken += 1
        if clock is not None and clock.due(start + taken):
            break
    if counts is None:
        return taken, None
    flag = overflow if overflow is not None else torch.zeros((), dtype=torch.bool)
    most, overflowed = torch.stack([counts.max(), flag.to(counts)]).tolist()  # the sync
    if overflowed:
        engine.roll_back(point)
        most = _replay(engine, plan, taken)
    return taken, int(most)


def _replay(engine: Engine, plan: Plan, steps: int) -> int:
    """An interval again, a step at a time: a step whose violators outgrew the capacity
    is undone and taken dense. So every step is what it would be in any split of the
    interval (a checkpoint that ends one early changes nothing)."""
    most = 0
    for _ in range(steps):
        point = engine.save_point()
        counts = engine.step(plan)
        if counts is not None and plan.capacity is not None and counts.max() > plan.capacity:
            engine.roll_back(point)
            counts = engine.step(DENSE)
        assert counts is not None
        most = int(counts.max())
    return most


def _boundary(
    engine: Engine,
    data: Dataset,
    checks: set[int],
    snapshot_at: set[int],
    started: float,
    device: str,
    calls: Callbacks,
) -> None:
    """Snapshots and measurements of the runs at one of their steps, and the stop rule."""
    for row, m in enumerate(engine.members):
        if m.step in snapshot_at and not any(s["step"] == m.step for s in m.snapshots):
            m.snapshots.extend(snapshot(engine.model(row), data, m.step))
    if not any(m.step in checks for m in engine.members):
        return
    measured = engine.measure(data)
    stopped = []
    for row, m in enumerate(engine.members):
        if m.step not in checks:
            continue
        m.last = {"step": m.step, **measured[row]}
        if not m.trace or m.trace[-1]["step"] != m.step:
            m.trace.append(m.last)
        try:
            check_finite(m.last, m.step)
        except FloatingPointError as exc:
            stopped.append(row)
            if calls.failed is None:
                raise
            calls.failed(m.spec, exc)
            continue
        if m.last["n_unsat"] == 0 or m.step >= m.spec.training.max_steps:
            stopped.append(row)
            if calls.done is not None:
                wall = m.wall_before + time.monotonic() - started
                args = (m.step, m.last, m.snapshots, m.trace, wall, device, m.resumed_from)
                calls.done(m.spec, finish(m.spec, engine.model(row), data, *args))
    if stopped:
        engine.keep([r for r in range(len(engine.members)) if r not in stopped])
