"""A pack (workers/pack.py) trains each of its runs as that run trained alone."""

from __future__ import annotations

import io

import pytest
import torch

from schemas.grid import parse_grid
from schemas.run import RunSpec
from workers.data import load_dataset
from workers.pack import pack_key, packable, train_pack
from workers.pack_plan import auto_pack_size, plan_tasks
from workers.train import RunResult, TrainState, measurement_steps
from workers.trainer import train

GRID = """
sweep: p
dataset: {{name: digits_parity_pca, train_size: 150, test_size: 300, pca_dim: 10}}
architectures: [{{name: fc, depth: 3, widths: {widths}}}]
seeds: {seeds}
training: {{lr_max: 0.01, max_steps: {steps}, {extra}}}
checkpoint: {{every_steps: {every}}}
resources: {{pack: {pack}}}
"""


def specs(widths="[4]", seeds=3, steps=300, every=100, extra="", pack="1") -> list[RunSpec]:
    text = GRID.format(widths=widths, seeds=seeds, steps=steps, every=every, extra=extra, pack=pack)
    return parse_grid(text).expand()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return load_dataset(specs()[0].dataset)


def packed(runs, data, resumes=None) -> tuple[dict, dict]:
    """Results and saved states of `runs` trained as one pack, by run_id."""
    results: dict[str, RunResult] = {}
    states: dict[str, list[TrainState]] = {s.run_id: [] for s in runs}
    train_pack(
        runs,
        data,
        resumes=resumes,
        save=lambda spec, state: states[spec.run_id].append(state),
        done=lambda spec, result: results.__setitem__(spec.run_id, result),
    )
    return results, states


def alone(spec, data, resume=None) -> tuple[RunResult, list[TrainState]]:
    states: list[TrainState] = []
    return train(spec, data, resume=resume, save=states.append), states


def assert_states_close(a: TrainState, b: TrainState) -> None:
    assert a.step == b.step
    assert a.model.keys() == b.model.keys()
    for key in a.model:
        torch.testing.assert_close(a.model[key], b.model[key], rtol=1e-9, atol=1e-12)
    sa, sb = a.optimizer["state"], b.optimizer["state"]
    assert sa.keys() == sb.keys() and a.optimizer["param_groups"] == b.optimizer["param_groups"]
    for i in sa:
        assert float(sa[i]["step"]) == float(sb[i]["step"])
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[i][moment], sb[i][moment], rtol=1e-8, atol=1e-15)


# widths [2, 3, 5] share one pack, zero-padded to width 5, each with its own lr (0.05 h^-1.5)
MIXED = "lr0: 0.05, lr_exponent: -1.5, lr_max: 1.0"


@pytest.mark.parametrize(
    ("widths", "extra"),
    [
        ("[3]", "optimizer: adam"),
        ("[3]", "optimizer: sgd, lr_max: 0.05"),
        ("[2, 3, 5]", f"optimizer: adam, {MIXED}"),
        ("[2, 3, 5]", "optimizer: sgd, lr0: 0.5, lr_exponent: -1.5, lr_max: 1.0"),
    ],
)
def test_packed_weights_and_outputs_equal_alone_over_a_few_hundred_steps(data, widths, extra):
    runs = specs(widths=widths, seeds=3 if widths == "[3]" else 2, steps=300, extra=extra)
    results, states = packed(runs, data)
    for spec in runs:
        want, want_states = alone(spec, data)
        assert [s.step for s in states[spec.run_id]] == [s.step for s in want_states]
        for a, b in zip(states[spec.run_id], want_states, strict=True):
            assert_states_close(a, b)
        got = results[spec.run_id]
        assert got.metrics["steps"] == want.metrics["steps"] == 300
        for a, b in zip(got.outputs, want.outputs, strict=True):
            assert (a.split, a.step) == (b.split, b.step)
            torch.testing.assert_close(a.f, b.f, rtol=1e-9, atol=1e-12)
        assert len(got.trace) == len(want.trace)
        for a, b in zip(got.trace, want.trace, strict=True):
            assert a == pytest.approx(b, rel=1e-9)


def test_whole_runs_stop_when_alone_with_the_same_errors(data):
    runs = specs(widths="[4, 8]", seeds=3, steps=3000, every=1000)
    checks = sorted(measurement_steps(3000))
    results = packed(runs, data)[0]  # both widths in one pack, the 4s zero-padded to 8
    stops = set()
    for spec in runs:
        got, want = results[spec.run_id].metrics, train(spec, data).metrics
        assert got["converged"] == want["converged"], spec.key
        assert got["n_unsat"] == want["n_unsat"], spec.key
        assert got["test_error"] == pytest.approx(want["test_error"], abs=1 / 300), spec.key
        # summation order may move a stop across one measurement step
        assert abs(checks.index(got["steps"]) - checks.index(want["steps"])) <= 1, spec.key
        stops.add(got["steps"])
    assert len(stops) > 2  # runs left the pack at different steps: the others went on


def test_a_stopped_run_is_frozen_while_the_rest_of_its_pack_goes_on(data):
    runs = specs(widths="[8]", seeds=3, steps=2000, every=1)
    results, states = packed(runs, data)
    ends = {s.run_id: results[s.run_id].metrics["steps"] for s in runs}
    assert len(set(ends.values())) > 1
    for spec in runs:
        saved = states[spec.run_id]
        assert saved[-1].step == ends[spec.run_id]  # no state saved after its stop
        want = train(spec, data)
        torch.testing.assert_close(
            results[spec.run_id].outputs[-1].f, want.outputs[-1].f, rtol=1e-8, atol=1e-10
        )


def test_a_narrow_runs_padding_stays_exactly_zero_and_leaves_with_the_widest_run(data):
    from workers.loop import DENSE, Member, Plan
    from workers.pack import stack_runs

    narrow, wide = specs(widths="[2, 6]", seeds=1, extra=MIXED)
    pack = stack_runs([Member(narrow), Member(wide)], [None, None], data)
    assert [p.shape[1:] for p in pack.params] == pack.members[1].shapes  # the wide run's
    assert pack.members[0].shapes[:2] == [(2, 10), (2,)]
    mine = [(0, *(slice(0, n) for n in shape)) for shape in pack.members[0].shapes]
    for step in range(200):  # both kinds of step
        pack.step(DENSE if step < 100 else Plan(150))
    for tensors in (pack.params, pack.exp_avg, pack.exp_avg_sq):
        for t, block in zip(tensors, mine, strict=True):
            outside = t[0].detach().clone()
            outside[block[1:]] = 0
            assert torch.count_nonzero(outside) == 0
            assert torch.count_nonzero(t[block]) > 0
    assert pack.lr.tolist() == [0.05 * 2**-1.5, 0.05 * 6**-1.5]
    before = [p[0][block[1:]].detach().clone() for p, block in zip(pack.params, mine, strict=True)]
    pack.keep([0])  # the wide run stopped: the pack shrinks to the narrow run's shapes
    assert [p.shape[1:] for p in pack.params] == pack.members[0].shapes
    assert all(torch.equal(p[0], b) for p, b in zip(pack.params, before, strict=True))


def _roundtrip(state: TrainState) -> TrainState:
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    return TrainState.from_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))


def test_a_packs_checkpoints_resume_alone_and_in_a_pack(data):
    runs = specs(widths="[3, 5]", seeds=1, steps=300)  # widths 3 and 5 in one pack
    whole, states = packed(runs, data)
    at_100 = [_roundtrip(states[s.run_id][0]) for s in runs]
    assert all(s.step == 100 for s in at_100)
    again, _ = packed(runs, data, resumes=at_100)
    for spec, state in zip(runs, at_100, strict=True):
        single = train(spec, data, resume=state)
        assert single.metrics["resumed_from"] == again[spec.run_id].metrics["resumed_from"] == 100
        for result in (single, again[spec.run_id]):
            for a, b in zip(result.outputs, whole[spec.run_id].outputs, strict=True):
                torch.testing.assert_close(a.f, b.f, rtol=1e-9, atol=1e-12)
    # and a single run's checkpoint resumes in a pack
    _, alone_states = alone(runs[0], data)
    mixed, _ = packed(runs, data, resumes=[_roundtrip(alone_states[1]), None])
    assert mixed[runs[0].run_id].metrics["resumed_from"] == 200
    torch.testing.assert_close(
        mixed[runs[0].run_id].outputs[-1].f, whole[runs[0].run_id].outputs[-1].f, rtol=1e-9, atol=0
    )


def test_a_diverging_run_fails_alone_and_the_others_finish(data):
    runs = specs(widths="[3]", seeds=2, steps=50, every=10)
    # a NaN input for one run only is not possible (they share data), so break its weights
    failures: dict[str, Exception] = {}
    results: dict[str, RunResult] = {}
    resumes: list[TrainState | None] = [None, None]
    _, states = alone(runs[0], data)
    bad = _roundtrip(states[0])
    bad.model["layers.0.weight"][0, 0] = float("nan")
    resumes[0] = bad
    train_pack(
        runs,
        data,
        resumes=resumes,
        done=lambda spec, result: results.__setitem__(spec.run_id, result),
        failed=lambda spec, exc: failures.__setitem__(spec.run_id, exc),
    )
    assert set(failures) == {runs[0].run_id} and "diverged" in str(failures[runs[0].run_id])
    assert set(results) == {runs[1].run_id} and results[runs[1].run_id].metrics["steps"] == 50


def test_what_may_share_a_pack():
    fc = specs(widths="[3, 4]", seeds=2)
    assert all(packable(s) for s in fc)
    assert len({pack_key(s) for s in fc}) == 1  # widths and seeds aside, they are one arch
    assert pack_key(specs(extra="margin: 0.5")[0]) != pack_key(fc[0])
    assert not packable(specs(extra="batch_size: 30")[0])
    assert not packable(specs(extra="subtract_init: true")[0])
    # a pack steps a hinge loss; cross-entropy runs were packed (and trained on the square
    # hinge) before issue 19: they train alone
    cross_entropy = specs(extra="loss: cross_entropy", pack="auto")
    assert not packable(cross_entropy[0])
    assert [len(t) for t in plan_tasks(cross_entropy, slots=1)] == [1, 1, 1]


def test_auto_pack_size_packs_small_nets_and_leaves_wide_ones_alone():
    assert auto_pack_size(8, 5, 1000, gpu=False) == 20
    assert auto_pack_size(4, 5, 5000, gpu=False) == 20
    assert auto_pack_size(4, 5, 10_000, gpu=False) == 1  # no gain at P h = 40,000 (issue 19)
    assert auto_pack_size(16, 5, 10_000, gpu=False) == 1  # element-bound on a CPU
    assert auto_pack_size(300, 5, 10_000, gpu=False) == 1
    assert 1 < auto_pack_size(100, 5, 10_000, gpu=True) < 20  # memory-capped


def test_plan_tasks_groups_seeds_of_a_width_as_the_grid_says():
    def grid(pack: str, seeds: int = 4) -> list[RunSpec]:
        return specs(widths="[3, 4]", seeds=seeds, pack=pack)

    assert [len(t) for t in plan_tasks(grid("1"), slots=2)] == [1] * 8
    two = plan_tasks(grid("2"), slots=2)
    assert [len(t) for t in two] == [2, 2, 2, 2]
    assert all(len({s.width for s in t}) == 1 for t in two)
    assert sorted(s.run_id for t in two for s in t) == sorted(s.run_id for s in grid("2"))
    # auto: runs of both widths in packs, as large as keeps the 2 slots busy, every task
    # holding both widths (dealt in turn), so the tasks end together
    auto = plan_tasks(grid("auto"), slots=2)
    assert [len(t) for t in auto] == [4, 4]
    assert all(sorted(s.width for s in t) == [3, 3, 4, 4] for t in auto)
    assert sorted(s.run_id for t in auto for s in t) == sorted(s.run_id for s in grid("auto"))
    assert [len(t) for t in plan_tasks(grid("auto"), slots=4)] == [2, 2, 2, 2]
    # widths more than twice apart do not share a pack (a narrow run would pay the padding)
    bands = plan_tasks(specs(widths="[3, 6, 7, 20]", seeds=2, pack="auto"), slots=1)
    assert [sorted({s.width for s in t}) for t in bands] == [[3, 6], [7], [20]]
    assert [len(t) for t in bands] == [4, 2, 2]
    # every band gets a multiple of the slots: no core waits while one pack ends a band
    split = plan_tasks(specs(widths="[3, 4, 5, 20]", seeds=3, pack="auto"), slots=2)
    assert [sorted(s.width for s in t) for t in split] == [
        [3, 3, 4, 5, 5],
        [3, 4, 4, 5],
        [20] * 2,
        [20],
    ]
    assert [len(t) for t in plan_tasks(grid("3", seeds=4), slots=1)] == [2, 2, 2, 2]  # even
    mini = specs(extra="batch_size: 30", pack="4")
    assert [len(t) for t in plan_tasks(mini, slots=1)] == [1, 1, 1]  # trained alone


def test_execute_pack_writes_each_run_and_skips_those_already_written(tmp_path):
    from schemas.layout import SweepLayout
    from workers import io as wio
    from workers.execute import execute_pack

    runs = specs(widths="[3]", seeds=2, steps=200, every=100)
    layout = SweepLayout(str(tmp_path), "p")
    first = execute_pack(runs, layout)
    assert [r["run_id"] for r in first] == [s.run_id for s in runs]
    for spec in runs:
        assert wio.exists(layout.metrics(*spec.key)) and wio.exists(layout.logits(*spec.key))
        assert not wio.exists(layout.checkpoint(spec.run_id))  # dropped once results landed
    again = execute_pack(runs, layout)  # a retried pack trains nothing again: same rows
    assert [{k: r[k] for k in a} for r, a in zip(again, first, strict=True)] == first


def test_a_pack_resumed_in_the_violator_only_phase_equals_the_uninterrupted_pack_bit_for_bit():
    """Issue 18 (defect 4), for a pack: its checkpoints at step 500 (fewer than half the
    points violated by then) resume with violator-only steps, as the pack went on."""
    runs = [
        s.model_copy(
            update={
                "dataset": s.dataset.model_copy(update={"train_size": 300}),
                "training": s.training.model_copy(update={"lr_max": 0.003}),
            }
        )
        for s in specs(widths="[4, 6]", seeds=1, steps=2500, every=250)
    ]
    data = load_dataset(runs[0].dataset)
    whole, states = packed(runs, data)
    p = runs[0].dataset.train_size
    for spec in runs:  # the trace's own count: the violator-only phase began before 500
        assert min(r["step"] for r in whole[spec.run_id].trace if r["n_unsat"] < 0.5 * p) < 500
    at_500 = [_roundtrip(next(s for s in states[r.run_id] if s.step == 500)) for r in runs]
    again, _ = packed(runs, data, resumes=at_500)
    for spec in runs:
        assert again[spec.run_id].metrics["resumed_from"] == 500
        for a, b in zip(again[spec.run_id].outputs, whole[spec.run_id].outputs, strict=True):
            assert torch.equal(a.f, b.f)
