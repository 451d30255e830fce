from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from schemas.grid import parse_grid
from schemas.run import RunSpec
from workers.data import load_dataset
from workers.train import (
    TrainState,
    deltas,
    input_gradient_norms,
    loss_value,
    measure,
    measurement_steps,
)
from workers.trainer import train

GRID = """
sweep: t
dataset: {{name: digits_parity_pca, train_size: 120, test_size: 200, pca_dim: 10}}
architectures: [{{name: fc, depth: 3, widths: [{width}]}}]
seeds: 1
training: {{lr0: 0.1, lr_exponent: -1.5, lr_max: 0.01, max_steps: {steps}, {extra}}}
checkpoint: {{every_steps: {every}}}
"""


def run_spec(width: float = 8, steps: int = 3000, extra: str = "", every: int = 100) -> RunSpec:
    return parse_grid(GRID.format(width=width, steps=steps, extra=extra, every=every)).expand()[0]


@pytest.fixture(scope="module")
def data():
    return load_dataset(run_spec().dataset)


def test_deltas_and_losses_against_hand_computation():
    f = torch.tensor([2.0, 0.5, -0.3, 1.0], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    d = [1 - yi * fi for fi, yi in zip(f.tolist(), y.tolist(), strict=True)]  # margin 1
    torch.testing.assert_close(deltas(f, y, 1.0), torch.tensor(d, dtype=torch.float64))
    square = sum(0.5 * max(0.0, di) ** 2 for di in d) / 4
    linear = sum(max(0.0, di) for di in d) / 4
    logistic = (
        sum(math.log1p(math.exp(-yi * fi)) for fi, yi in zip(f.tolist(), y.tolist(), strict=True))
        / 4
    )
    assert loss_value("square_hinge", f, y, 1.0).item() == pytest.approx(square)
    assert loss_value("hinge", f, y, 1.0).item() == pytest.approx(linear)
    assert loss_value("cross_entropy", f, y, 1.0).item() == pytest.approx(logistic)


def test_multiclass_deltas_are_margin_minus_score_gaps():
    f = torch.tensor([[3.0, 1.0, 2.5], [0.0, 0.2, -1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    hand = [[1 - (3.0 - 1.0), 1 - (3.0 - 2.5)], [1 - (0.2 - 0.0), 1 - (0.2 + 1.0)]]
    torch.testing.assert_close(deltas(f, y, 1.0), torch.tensor(hand, dtype=torch.float64))
    per_sample = [sum(max(0, v) for v in row) for row in hand]
    assert loss_value("hinge", f, y, 1.0).item() == pytest.approx(sum(per_sample) / 2)


def test_measurement_steps_are_log_spaced_and_every_thousand():
    steps = measurement_steps(2_000_000)
    assert {0, 1, 2, 10, 100, 1000, 2000, 5000, 1_999_000, 2_000_000} <= steps
    for lo in (10, 100, 10_000, 100_000):  # about 20 log-spaced steps in every decade
        assert 18 <= len([s for s in steps if lo <= s < 10 * lo and (s % 1000 or lo < 1000)]) <= 21
    assert 3001 not in steps and 1500 not in steps


class Constant(nn.Module):
    """f(x) = c for every sample: for checking the stop rule's tolerance."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.values = values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values[:, None]


@pytest.mark.parametrize(("tol", "unsat"), [(1e-12, 0), (0.0, 1)])
def test_stop_rule_counts_rounding_level_deltas_as_satisfied_unless_strict(tol, unsat):
    from workers.data import Split

    spec = run_spec(extra=f"delta_tol: {tol}")
    y = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    f = torch.tensor([1 - 1e-16 * 2, -2.0, 3.0], dtype=torch.float64)  # Delta = 2.2e-16 > 0
    m = measure(Constant(f), Split(torch.zeros(3, 1), y, torch.arange(3)), spec)
    assert m["n_unsat"] == unsat
    assert 0 < m["max_delta"] < 1e-15
    assert m["train_error"] == 0.0


def test_a_run_stops_at_the_first_measurement_step_with_no_unsatisfied_constraint(data):
    spec = run_spec(width=16)
    result = train(spec, data)
    m, trace = result.metrics, result.trace
    assert m["converged"] and m["n_unsat"] == 0 and m["train_loss"] == 0.0
    assert m["steps"] < spec.training.max_steps
    assert trace[-1]["step"] == m["steps"] and trace[-1]["n_unsat"] == 0
    assert all(t["n_unsat"] > 0 for t in trace[:-1])
    assert {t["step"] for t in trace} <= measurement_steps(spec.training.max_steps)


def test_a_run_that_cannot_fit_stops_at_max_steps(data):
    spec = run_spec(width=1, steps=300)
    m = train(spec, data).metrics
    assert m["steps"] == 300 and not m["converged"] and m["n_unsat"] > 0


def test_metrics_agree_with_the_outputs(data):
    spec = run_spec(width=6, steps=500)
    result = train(spec, data)
    train_out, test_out = result.outputs
    assert (train_out.split, test_out.split) == ("train", "test")
    assert train_out.f.shape == (120,) and test_out.f.shape == (200,)
    assert test_out.f.dtype == torch.float64  # the default dtype
    y = data.test.y
    assert result.metrics["test_error"] == pytest.approx(
        (y * test_out.f <= 0).double().mean().item()
    )
    assert result.metrics["f_norm"] == pytest.approx(test_out.f.pow(2).mean().sqrt().item())
    assert result.metrics["lr"] == pytest.approx(min(0.1 * 6**-1.5, 0.01))
    assert result.metrics["grad_norm"] == pytest.approx(
        test_out.grad_norm.pow(2).mean().sqrt().item()
    )


def test_input_gradient_norms_match_a_per_sample_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    hand = []
    for i in range(6):
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x[i])  # (3, 5)
        hand.append(jac.norm().item())
    torch.testing.assert_close(
        input_gradient_norms(model, x), torch.tensor(hand, dtype=torch.float64)
    )
    torch.testing.assert_close(
        input_gradient_norms(model, x, chunk=4), torch.tensor(hand, dtype=torch.float64)
    )


def test_float32_runs_in_float32_from_the_same_initial_weights(data):
    from workers.execute import dataset_for

    spec64 = run_spec(width=4, steps=50)
    spec32 = run_spec(width=4, steps=50, extra="dtype: float32")
    out32 = train(spec32, dataset_for(spec32, torch.device("cpu")))
    out64 = train(spec64, data)
    assert out32.outputs[1].f.dtype == torch.float32
    torch.testing.assert_close(
        out32.outputs[1].f.double(), out64.outputs[1].f, atol=1e-3, rtol=1e-3
    )
    assert not torch.equal(out32.outputs[1].f.double(), out64.outputs[1].f)


@pytest.mark.parametrize(
    "extra", ["optimizer: adam", "optimizer: sgd, batch_size: 30, lr_max: 0.5"]
)
def test_resumed_run_equals_an_uninterrupted_one_bit_for_bit(data, extra):
    spec = run_spec(width=3, steps=700, extra=extra, every=100)
    saved: list[TrainState] = []
    whole = train(spec, data, save=lambda st: saved.append(st))
    assert [s.step for s in saved] == list(range(100, 701, 100))
    # resume from the state at step 300 (as a checkpoint file would give it back)
    state = TrainState.from_dict(_roundtrip(saved[2].to_dict()))
    resumed = train(spec, data, resume=state)
    for a, b in zip(whole.outputs, resumed.outputs, strict=True):
        assert torch.equal(a.f, b.f)
    assert resumed.trace == whole.trace
    assert resumed.metrics["resumed_from"] == 300 and whole.metrics["resumed_from"] == 0
    same = {k: v for k, v in whole.metrics.items() if k not in ("wall_s", "resumed_from")}
    assert {k: resumed.metrics[k] for k in same} == same


def test_snapshots_store_outputs_at_the_listed_steps(data):
    spec = run_spec(width=4, steps=40, extra="snapshot_steps: [0, 10]")
    result = train(spec, data)
    steps = [(o.split, o.step) for o in result.outputs]
    assert steps == [
        ("train", 0),
        ("test", 0),
        ("train", 10),
        ("test", 10),
        ("train", 40),
        ("test", 40),
    ]
    from workers.train import build_model, squeeze_output

    fresh = build_model(spec, 10)
    with torch.no_grad():
        torch.testing.assert_close(result.outputs[1].f, squeeze_output(fresh, data.test.x))


def _roundtrip(state: dict) -> dict:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def test_subtract_init_trains_f_minus_its_initial_value(data):
    spec = run_spec(width=8, steps=2000, extra="subtract_init: true, snapshot_steps: [0]")
    result = train(spec, data)
    at_start = [o for o in result.outputs if o.step == 0]
    assert all(torch.count_nonzero(o.f) == 0 for o in at_start)  # f - f0 = 0 at init
    assert result.metrics["converged"]
    plain = train(run_spec(width=8, steps=2000, extra="snapshot_steps: [0]"), data)
    assert torch.count_nonzero(plain.outputs[0].f) > 0


def test_optimiser_gets_the_learning_rate_rule_and_adam_eps():
    from workers.train import build_model, make_optimizer

    spec = run_spec(width=9, extra="adam_eps: 1.0e-6")
    group = make_optimizer(spec, build_model(spec, 10)).param_groups[0]
    assert group["eps"] == 1e-6 and group["lr"] == pytest.approx(min(0.1 * 9**-1.5, 0.01))
    assert isinstance(
        make_optimizer(run_spec(extra="optimizer: sgd"), build_model(spec, 10)), torch.optim.SGD
    )


def test_a_snapshot_at_the_final_step_is_not_stored_twice(data):
    spec = run_spec(width=2, steps=30, extra="snapshot_steps: [0, 30]")
    result = train(spec, data)
    assert result.metrics["steps"] == 30
    assert [(o.split, o.step) for o in result.outputs] == [
        ("train", 0),
        ("test", 0),
        ("train", 30),
        ("test", 30),
    ]
    assert result.outputs[-1].grad_norm is not None  # the final outputs, not the snapshot


@pytest.mark.usefixtures("one_torch_thread")  # as a worker trains: one CPU per task
# an FC run (a pack of one) and a torch module run (`Solo`: f minus its init)
@pytest.mark.parametrize("extra", ["", "subtract_init: true"])
def test_a_run_resumed_in_the_violator_only_phase_equals_an_uninterrupted_one_bit_for_bit(extra):
    """Issue 18 (defect 4): a checkpoint taken once only the violators are back-propagated
    (fewer than half the points violated) resumes in that phase, not in the dense one,
    whose gradient sums in another order (here the net then drifted by |f| ~ 1.8)."""
    spec = run_spec(width=4, steps=8000, every=250, extra=extra)
    spec = spec.model_copy(
        update={
            "dataset": spec.dataset.model_copy(update={"train_size": 300}),
            "training": spec.training.model_copy(update={"lr_max": 0.003}),
        }
    )
    data = load_dataset(spec.dataset)
    saved: list[TrainState] = []
    whole = train(spec, data, save=saved.append)
    late = [s for s in saved if s.step == 750]
    resumed = train(spec, data, resume=TrainState.from_dict(_roundtrip(late[0].to_dict())))
    p = spec.dataset.train_size
    # the trace says when fewer than half the points were violated, from its own count
    sparse_from = min(r["step"] for r in whole.trace if r["n_unsat"] < 0.5 * p)
    assert sparse_from < 750 and resumed.metrics["resumed_from"] == 750
    assert not late[0].dense and late[0].capacity is not None  # a violator step's capacity
    for a, b in zip(whole.outputs, resumed.outputs, strict=True):
        assert torch.equal(a.f, b.f)
    assert resumed.trace == whole.trace


def test_the_trace_records_the_test_error_at_each_measurement_step(data):
    """Issue 16 (Fig. 2's early-stopping curve): the trace's test error at a step is the
    share of test points that the net of that step misclassifies, counted here from the
    snapshot's test outputs (y f <= 0); at the last step it is the run's test error."""
    steps = [10, 50, 100]  # measurement steps (about 20 per decade)
    assert set(steps) <= measurement_steps(300)
    spec = run_spec(width=4, steps=300, extra=f"snapshot_steps: {steps}")
    result = train(spec, data)
    by_step = {r["step"]: r["test_error"] for r in result.trace}
    assert set(by_step) == {s for s in measurement_steps(300) if s <= result.metrics["steps"]}
    y = data.test.y
    for out in result.outputs:
        if out.split == "test" and out.step in steps:
            wrong = (y * out.f <= 0).double().mean().item()
            assert by_step[out.step] == pytest.approx(wrong, abs=1e-15)
    assert by_step[result.metrics["steps"]] == result.metrics["test_error"]
    assert len(set(by_step.values())) > 1  # it moves along training
