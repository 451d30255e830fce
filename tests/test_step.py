"""One step for runs and packs (workers/loop.py, workers/pack.py, workers/trainer.py):
the hand-written backward against autograd, no host sync inside a step, and an
overflowing violator step rolled back and taken dense."""

from __future__ import annotations

import pytest
import torch

from schemas.grid import parse_grid
from schemas.run import RunSpec
from workers import loop
from workers.data import Dataset, load_dataset
from workers.datasets.split import Split
from workers.loop import DENSE, Member, Plan, member, plan_after, resumed_plan
from workers.pack import Pack, run_model, stack_runs, train_pack
from workers.train import RunResult, TrainState, loss_value, squeeze_output
from workers.trainer import Solo, train

GRID = """
sweep: s
dataset: {{name: digits_parity_pca, train_size: 150, test_size: 100, pca_dim: 10}}
architectures: [{{name: fc, depth: 3, widths: {widths}}}]
seeds: {seeds}
training: {{lr0: 0.05, lr_exponent: -1.5, lr_max: 1.0, max_steps: {steps}, {extra}}}
checkpoint: {{every_steps: 100}}
"""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def specs(widths="[2, 3, 5]", seeds=2, steps=300, extra="") -> list[RunSpec]:
    text = GRID.format(widths=widths, seeds=seeds, steps=steps, extra=extra)
    return parse_grid(text).expand()


@pytest.fixture(scope="module")
def data():
    return load_dataset(specs()[0].dataset)


def autograd_gradients(pack: Pack, row: int, data: Dataset) -> list[torch.Tensor]:
    """The run's full-batch gradient, by autograd through its own FC module."""
    spec = pack.members[row].spec
    model = run_model(pack, row, data.train.x.shape[1])
    f = squeeze_output(model, data.train.x)
    loss_value(spec.training.loss, f, data.train.y, spec.training.margin).backward()
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("loss", ["square_hinge", "hinge"])
def test_the_hand_written_backward_equals_autograd_for_every_run_and_kind_of_step(data, loss):
    runs = specs(extra=f"loss: {loss}")
    pack = stack_runs([Member(s) for s in runs], [None] * len(runs), data)
    for _ in range(150):  # from nearly every point violated to a few
        pack.step(DENSE)
    violated = (1 - pack.y * pack.forward(data.train.x)[0] > 0).sum(1)
    p = len(data.train)
    assert 0 < int(violated.min()) < 0.5 * p  # some run is in the violator phase
    for plan in (DENSE, Plan(min(p, int(violated.max()) + 5)), Plan(p)):
        pack.gradients(plan)
        for row, m in enumerate(pack.members):
            for mine, want in zip(pack.grads, autograd_gradients(pack, row, data), strict=True):
                block = (row, *(slice(0, n) for n in want.shape))
                torch.testing.assert_close(mine[block], want, rtol=1e-10, atol=1e-15)
                outside = mine[row].clone()
                outside[block[1:]] = 0
                assert torch.count_nonzero(outside) == 0, m.spec.width  # padding: exactly 0


def on_meta(data: Dataset) -> Dataset:
    def meta(split: Split) -> Split:
        return Split(split.x.to("meta"), split.y.to("meta"), split.index)

    return Dataset(meta(data.train), meta(data.test))


def test_no_step_waits_for_the_device(data):
    """A meta tensor has a shape and no values: anything that reads a value on the host
    (.item(), int(), nonzero(), a boolean mask's count) raises on it. Every kind of step
    of a pack, and the loss of a run's step as a torch module, run on meta tensors."""
    with pytest.raises(RuntimeError):  # the probe catches a host sync
        int(torch.zeros(3, device="meta").max())
    with pytest.raises(NotImplementedError):
        torch.zeros(3, device="meta").nonzero()
    meta = on_meta(data)
    runs = specs()
    pack = stack_runs([Member(s) for s in runs], [None] * len(runs), meta)
    for plan in (DENSE, Plan(16)):
        counts = pack.step(plan)
        assert counts.device.type == "meta" and counts.shape == (len(runs),)
    # a module run (a frozen init copy is not a pack): its loss and backward, on meta;
    # the fused Adam step after it is torch's (one kernel on a GPU, no sync)
    solo = Solo(member(specs(extra="subtract_init: true")[0], None), meta, None)
    for plan in (DENSE, Plan(16)):
        step_loss, counts = solo.loss(plan)
        step_loss.backward()
        assert step_loss.device.type == "meta" and counts is not None


def tiny_capacity(most_violated: int, n: int) -> Plan:
    """A plan whose violator steps overflow as soon as two points are violated."""
    return loop.DENSE if most_violated > loop.DENSE_FRACTION * n else Plan(1)


def always_dense(most_violated: int, n: int) -> Plan:
    return loop.DENSE


def counting_roll_backs(monkeypatch, engine: type) -> list[int]:
    calls: list[int] = []
    original = engine.roll_back

    def roll_back(self, point) -> None:  # noqa: ANN001
        calls.append(self.members[0].step)
        original(self, point)

    monkeypatch.setattr(engine, "roll_back", roll_back)
    return calls


@pytest.mark.parametrize(
    ("extra", "engine"), [("", Pack), ("subtract_init: true", Solo)], ids=["pack", "module"]
)
def test_an_overflowing_violator_step_is_rolled_back_and_taken_dense(
    data, monkeypatch, extra, engine
):
    """With room for one violator, every violator interval overflows: the loop must undo
    it and take its steps dense, so the run ends exactly as one that only steps dense
    (a clipped step would drop violators' gradients; a missed undo would keep them)."""
    runs = specs(widths="[3]", seeds=1, steps=600, extra=extra)
    monkeypatch.setattr(loop, "plan_after", always_dense)
    want = train(runs[0], data)
    monkeypatch.setattr(loop, "plan_after", tiny_capacity)
    calls = counting_roll_backs(monkeypatch, engine)
    got = train(runs[0], data)
    assert len(calls) >= 5  # violator intervals were tried and undone
    for a, b in zip(got.outputs, want.outputs, strict=True):
        assert torch.equal(a.f, b.f)
    assert got.trace == [{**r, "step": r["step"]} for r in want.trace]


def test_a_pack_of_one_is_the_run_alone_and_a_run_in_a_pack(data):
    """A single FC run trains as a pack of one: the same numbers as in a pack of three
    (rounding aside: padding changes the shapes a matmul sums over)."""
    runs = specs(widths="[2, 3, 5]", seeds=1, steps=400)
    results: dict[str, RunResult] = {}
    train_pack(runs, data, done=lambda s, r: results.__setitem__(s.run_id, r))
    for spec in runs:
        alone = train(spec, data)
        assert alone.metrics["steps"] == results[spec.run_id].metrics["steps"]
        for a, b in zip(alone.outputs, results[spec.run_id].outputs, strict=True):
            torch.testing.assert_close(a.f, b.f, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("capacity", ["twice the count", "room for one"])
def test_checkpoints_do_not_change_the_steps_a_run_takes(data, monkeypatch, capacity):
    """Checkpoints end an interval early (every 7 steps here, across the measurement
    steps); the run must take the same steps as one that never saves, bit for bit, also
    when its violator steps overflow and are taken again one at a time."""
    if capacity == "room for one":
        monkeypatch.setattr(loop, "plan_after", tiny_capacity)
    spec = specs(widths="[3]", seeds=1, steps=700)[0]
    often = spec.model_copy(
        update={"checkpoint": spec.checkpoint.model_copy(update={"every_steps": 7})}
    )
    for engine_spec in (
        often,
        often.model_copy(
            update={"training": often.training.model_copy(update={"subtract_init": True})}
        ),
    ):
        never = train(engine_spec, data)
        saved = []
        split = train(engine_spec, data, save=saved.append)
        assert len(saved) == 100
        assert any(not s.dense for s in saved)  # violator intervals were split
        for a, b in zip(split.outputs, never.outputs, strict=True):
            assert torch.equal(a.f, b.f)


def test_the_kind_of_step_follows_the_violator_count():
    assert plan_after(51, 100) == DENSE  # more than half violated: one dense pass pays
    assert plan_after(50, 100) == Plan(100)  # capped at the P points there are
    assert plan_after(30, 1000) == Plan(2 * 30 + 16)
    assert plan_after(0, 1000) == Plan(16)
    # a resume takes the checkpoint's kind; dense as soon as one run was dense
    fresh = TrainState(0, {}, {}, torch.zeros(1), [], [], 0.0)
    assert resumed_plan([None], 1000) == DENSE
    assert resumed_plan([fresh], 1000) == DENSE
    late = TrainState(5, {}, {}, torch.zeros(1), [], [], 0.0, dense=False, capacity=40)
    older = TrainState(5, {}, {}, torch.zeros(1), [], [], 0.0, dense=False)  # no capacity
    assert resumed_plan([late], 1000) == Plan(40)
    assert resumed_plan([late, older], 1000) == Plan(1000)
    assert resumed_plan([late, fresh], 1000) == DENSE
