"""workers.reduce against plain Python loops on small random tables (STYLE.md 5, 10)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from schemas.errors import JamsweepError
from workers.ensembles import ensemble_curve, seed_subsets
from workers.outputs import WidthOutputs, WidthOutputsBuilder, outputs_matrix
from workers.reduce import (
    ensemble_members,
    error_rate,
    half_jamming_points,
    jamming,
    jamming_bracket,
    jamming_points,
    width_curve,
    with_n_over_nstar,
)

# -- independent hand computations: loops over samples and seeds, no numpy vector tricks --


def hand_wrong(f_sample, label) -> bool:
    """One sample: y f <= 0, or the first index of the largest output differs from y."""
    if np.ndim(f_sample) == 0:
        return label * f_sample <= 0
    best = 0
    for c in range(len(f_sample)):
        if f_sample[c] > f_sample[best]:
            best = c
    return best != label


def hand_error(f_run, labels) -> float:
    return sum(hand_wrong(f_run[s], labels[s]) for s in range(len(labels))) / len(labels)


def hand_mean_output(f, runs):
    total = [0.0 * f[runs[0]][s] for s in range(len(f[0]))]
    for r in runs:
        for s in range(len(f[0])):
            total[s] = total[s] + f[r][s]
    return [t / len(runs) for t in total]


def hand_sq_norm(vec) -> float:
    """|v|^2 for a scalar or a vector of outputs."""
    return float(np.sum(np.square(vec)))


def hand_rms(per_sample) -> float:
    return math.sqrt(sum(hand_sq_norm(v) for v in per_sample) / len(per_sample))


def hand_curve(f, grads, labels, converged, train_error, train_loss, members):
    n_runs, n_samples = len(f), len(labels)
    errors = [hand_error(f[r], labels) for r in range(n_runs)]
    mean = sum(errors) / n_runs
    everyone = list(range(n_runs))
    f_all = hand_mean_output(f, everyone)
    grad_of = sorted(hand_rms(grads[r]) for r in everyone)
    middle = n_runs // 2
    row = {
        "n_seeds": n_runs,
        "n_converged": sum(converged),
        "test_error_mean": mean,
        "test_error_std": math.sqrt(sum((e - mean) ** 2 for e in errors) / n_runs),
        "train_error_mean": sum(train_error) / n_runs,
        "train_loss_mean": sum(train_loss) / n_runs,
        "f_norm": sum(hand_rms(f[r]) for r in range(n_runs)) / n_runs,
        "grad_norm": sum(hand_rms(grads[r]) for r in range(n_runs)) / n_runs,
        "grad_norm_median": grad_of[middle]
        if n_runs % 2
        else (grad_of[middle - 1] + grad_of[middle]) / 2,
        "f_var_all": sum(
            sum(hand_sq_norm(f[r][s] - f_all[s]) for s in range(n_samples)) / n_samples
            for r in everyone
        )
        / n_runs,
        "n_ensembled": len(members),
        "n_dead": sum(1 for r in range(n_runs) if hand_rms(grads[r]) == 0.0),
    }
    if not members:
        return row | dict.fromkeys(["ens_test_error", "gap", "f_var", "delta"], math.nan)
    f_bar = hand_mean_output(f, members)
    ens = hand_error(f_bar, labels)
    member_mean = sum(errors[r] for r in members) / len(members)
    f_var = sum(
        sum(hand_sq_norm(f[r][s] - f_bar[s]) for s in range(n_samples)) / n_samples for r in members
    ) / len(members)
    grad = sum(hand_rms(grads[r]) for r in members) / len(members)
    return row | {
        "ens_test_error": ens,
        "gap": member_mean - ens,
        "f_var": f_var,
        "delta": math.sqrt(f_var) / grad,
    }


# -- random tables ------------------------------------------------------------------------


def random_width(rng, n_runs, n_samples, n_out, *, ties: bool):
    """Metrics and outputs of one width. With ties, outputs are small integers, so f = 0,
    f_bar = 0 and equal largest outputs all happen."""
    shape = (n_runs, n_samples) if n_out == 1 else (n_runs, n_samples, n_out)
    f = rng.integers(-2, 3, size=shape).astype(float) if ties else rng.normal(size=shape)
    labels = rng.choice([-1, 1], n_samples) if n_out == 1 else rng.integers(0, n_out, n_samples)
    grads = rng.uniform(0.5, 2.0, size=(n_runs, n_samples))
    run_ids = [f"r{i}" for i in range(n_runs)]
    converged = [bool(rng.random() < 0.6) for _ in range(n_runs)]
    metrics = pd.DataFrame(
        {
            "run_id": run_ids,
            "n_params": 100,
            "converged": converged,
            "train_error": rng.uniform(0, 0.1, n_runs),
            "train_loss": rng.uniform(0, 0.1, n_runs),
            "steps": 10,
        }
    )
    outputs = WidthOutputs(run_ids, f, np.sqrt((grads**2).mean(axis=1)), labels)
    return metrics, outputs, grads


CASES = [  # (runs, samples, outputs, ties)
    (5, 40, 1, True),
    (5, 40, 1, False),
    (4, 30, 10, True),
    (6, 25, 3, False),
    (1, 20, 1, True),  # a single seed
    (1, 20, 4, False),
]


@pytest.mark.parametrize(("n_runs", "n_samples", "n_out", "ties"), CASES)
@pytest.mark.parametrize("over", ["converged", "all"])
def test_width_curve_matches_a_hand_loop(n_runs, n_samples, n_out, ties, over):
    rng = np.random.default_rng([n_runs, n_samples, n_out, ties])
    metrics, outputs, grads = random_width(rng, n_runs, n_samples, n_out, ties=ties)
    converged = metrics["converged"].tolist()
    members = [r for r in range(n_runs) if over == "all" or converged[r]]
    got = width_curve(metrics, outputs, ensemble_over=over)
    want = hand_curve(
        outputs.f,
        grads,
        outputs.labels,
        converged,
        metrics["train_error"],
        metrics["train_loss"],
        members,
    )
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12, nan_ok=True), key
    assert got["n_outputs"] == n_out


def test_ties_count_as_errors_and_argmax_ties_go_to_the_lowest_class():
    # one output: f = 0 is an error; f_bar of +1 and -1 is 0, an error too
    f = np.array([[0.0, 1.0, -1.0], [0.0, -1.0, -1.0]])
    labels = np.array([1, 1, -1])
    assert error_rate(f[0], labels) == pytest.approx(1 / 3)
    assert error_rate(f.mean(axis=0), labels) == pytest.approx(2 / 3)
    # several outputs: [1, 1, 0] predicts class 0
    g = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    assert error_rate(g, np.array([0, 1])) == 0.0
    assert error_rate(g, np.array([1, 2])) == 1.0


def test_a_width_with_no_converged_seed_has_no_ensemble():
    rng = np.random.default_rng(3)
    metrics, outputs, _ = random_width(rng, 4, 30, 1, ties=False)
    metrics["converged"] = False
    row = width_curve(metrics, outputs)
    assert row["n_converged"] == 0 and row["n_ensembled"] == 0
    for key in ("ens_test_error", "gap", "f_var", "delta"):
        assert math.isnan(row[key])
    assert not math.isnan(row["test_error_mean"])
    assert ensemble_curve(outputs, ensemble_members(metrics, outputs.run_ids, "converged")) == []


def test_a_single_seed_has_no_spread_and_no_ensemble_gain():
    rng = np.random.default_rng(4)
    metrics, outputs, _ = random_width(rng, 1, 50, 1, ties=False)
    metrics["converged"] = True
    row = width_curve(metrics, outputs)
    assert row["test_error_std"] == 0.0
    assert row["gap"] == 0.0 and row["f_var"] == 0.0 and row["delta"] == 0.0
    assert row["ens_test_error"] == row["test_error_mean"]
    [only] = ensemble_curve(outputs, np.array([0]))
    assert only["n"] == 1 and only["exact"] and only["excess_error"] == 0.0
    assert math.isnan(only["delta_inf"])  # one seed says nothing of the seeds' variance


def test_metrics_rows_are_matched_to_outputs_by_run_id_not_by_order():
    rng = np.random.default_rng(5)
    metrics, outputs, _ = random_width(rng, 5, 30, 1, ties=False)
    metrics["converged"] = [True, False, True, False, True]
    shuffled = metrics.iloc[[3, 0, 4, 2, 1]].reset_index(drop=True)
    assert width_curve(shuffled, outputs) == width_curve(metrics, outputs)


def hand_ensemble(f, labels, grads, members, subsets_of_n):
    """Rows of ensemble.parquet for given subsets (lists of member positions) per n."""
    f_bar = hand_mean_output(f, members)
    full = hand_error(f_bar, labels)
    grad = sum(hand_rms(grads[r]) for r in members) / len(members)
    m = len(members)
    # s^2: the seeds' variance around the infinite ensemble, unbiased (M - 1)
    spread = (
        sum(
            sum(hand_sq_norm(f[r][s] - f_bar[s]) for s in range(len(labels))) / len(labels)
            for r in members
        )
        / (m - 1)
        if m > 1
        else math.nan
    )
    rows = []
    for n, subsets in subsets_of_n.items():
        errors, dist2 = [], []
        for subset in subsets:
            runs = [members[i] for i in subset]
            avg = hand_mean_output(f, runs)
            errors.append(hand_error(avg, labels))
            dist2.append(
                sum(hand_sq_norm(avg[s] - f_bar[s]) for s in range(len(labels))) / len(labels)
            )
        mean = sum(errors) / len(errors)
        std = math.sqrt(sum((e - mean) ** 2 for e in errors) / len(errors))
        rows.append(
            {
                "n": n,
                "test_error_mean": mean,
                "test_error_std": std,
                "excess_error": mean - full,
                "delta": math.sqrt(sum(dist2) / len(dist2)) / grad,
                "delta_inf": math.sqrt(sum(dist2) / len(dist2) + spread / m) / grad,
                "n_members": m,
            }
        )
    return rows


@pytest.mark.parametrize(("n_runs", "n_out", "ties"), [(5, 1, True), (4, 3, False), (6, 10, True)])
def test_ensemble_rows_over_all_subsets_match_a_hand_loop(n_runs, n_out, ties):
    rng = np.random.default_rng([n_runs, n_out])
    metrics, outputs, grads = random_width(rng, n_runs, 30, n_out, ties=ties)
    members = np.array([r for r in range(n_runs) if r != 1])  # run 1 is left out
    got = ensemble_curve(outputs, members, max_subsets=1000)
    m = len(members)
    every = {n: list(itertools.combinations(range(m), n)) for n in range(1, m + 1)}
    want = hand_ensemble(outputs.f, outputs.labels, grads, list(members), every)
    assert [r["n"] for r in got] == list(range(1, m + 1))
    assert all(r["exact"] and r["n_subsets"] == math.comb(m, r["n"]) for r in got)
    for g, w in zip(got, want, strict=True):
        for key, value in w.items():
            assert g[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert got[-1]["excess_error"] == 0.0 and got[-1]["delta"] == pytest.approx(0.0, abs=1e-15)
    assert all(math.isnan(r["excess_error_inf"]) for r in got)  # filled by the fit, later


def test_sampled_subsets_are_seeded_and_match_a_hand_loop_over_the_same_subsets():
    rng = np.random.default_rng(8)
    metrics, outputs, grads = random_width(rng, 9, 40, 1, ties=False)
    members = np.arange(9)
    got = ensemble_curve(outputs, members, max_subsets=10, seed=3)
    chosen = {n: seed_subsets(9, n, max_subsets=10, seed=3)[0].tolist() for n in range(1, 10)}
    want = hand_ensemble(outputs.f, outputs.labels, grads, list(members), chosen)
    assert [r["exact"] for r in got] == [
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        True,
        True,
    ]  # C(9, n) <= 10 only for n = 1, 8, 9
    for g, w in zip(got, want, strict=True):
        for key, value in w.items():
            assert g[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_seed_subsets_are_valid_reproducible_and_exact_when_few():
    rows, exact = seed_subsets(20, 5, max_subsets=50, seed=1)
    assert not exact and rows.shape == (50, 5)
    assert all(len(set(r)) == 5 and r.min() >= 0 and r.max() < 20 for r in rows)
    assert (np.diff(rows, axis=1) > 0).all()  # sorted, distinct
    assert np.array_equal(rows, seed_subsets(20, 5, max_subsets=50, seed=1)[0])
    assert not np.array_equal(rows, seed_subsets(20, 5, max_subsets=50, seed=2)[0])
    assert len({tuple(r) for r in rows}) > 40  # uniform draws from 15504 rarely repeat
    every, exact = seed_subsets(6, 3, max_subsets=20)
    assert exact and sorted(map(tuple, every)) == list(itertools.combinations(range(6), 3))


def test_builder_aligns_samples_by_index_whatever_the_row_order():
    rng = np.random.default_rng(9)
    samples = np.array([7, 3, 11, 5])
    labels = np.array([1, -1, 1, -1])
    f = rng.normal(size=(2, 4))
    builder = WidthOutputsBuilder(2)
    builder.add("a", samples, labels, f[0], np.ones(4))
    order = [2, 0, 3, 1]
    builder.add("b", samples[order], labels[order], f[1][order], 2 * np.ones(4))
    out = builder.build()
    by_sample = np.argsort(samples)
    assert np.array_equal(out.labels, labels[by_sample])
    assert np.array_equal(out.f, f[:, by_sample])
    assert np.allclose(out.grad_norm, [1.0, 2.0])


def test_builder_refuses_runs_with_other_test_samples():
    builder = WidthOutputsBuilder(2)
    builder.add("a", np.array([0, 1, 2]), np.array([1, 1, -1]), np.zeros(3), np.ones(3))
    with pytest.raises(JamsweepError, match="run b"):
        builder.add("b", np.array([0, 1, 5]), np.array([1, 1, -1]), np.zeros(3), np.ones(3))
    with pytest.raises(JamsweepError, match="run c"):
        builder.add("c", np.array([0, 1]), np.array([1, 1]), np.zeros(2), np.ones(2))


def test_outputs_matrix_from_a_pandas_frame_gives_the_same_curve():
    rng = np.random.default_rng(10)
    metrics, outputs, _ = random_width(rng, 3, 12, 4, ties=False)
    rows = [
        {
            "run_id": r,
            "sample": s,
            "label": int(outputs.labels[s]),
            "f": outputs.f[i, s].tolist(),
            "grad_norm": float(outputs.grad_norm[i]),
        }
        for i, r in enumerate(outputs.run_ids)
        for s in rng.permutation(12)
    ]
    again = outputs_matrix(pd.DataFrame(rows))
    assert width_curve(metrics, again) == pytest.approx(width_curve(metrics, outputs))


# -- N* ---------------------------------------------------------------------------------


def table(arch, n_params, converged, seeds=4):
    return pd.DataFrame(
        {
            "arch": arch,
            "width": np.arange(1.0, len(n_params) + 1),
            "n_params": n_params,
            "n_seeds": seeds,
            "n_converged": converged,
        }
    )


def test_n_star_is_where_this_width_and_every_larger_one_converged():
    curves = pd.concat(
        [
            table("a", [10, 100, 1000, 10000], [0, 1, 3, 4]),
            table("b", [10, 100, 1000], [0, 0, 3]),
            table("c", [50, 60, 70, 80], [4, 3, 4, 4]),  # not monotone: N* above the dip
            table("d", [50, 60, 70], [4, 4, 3]),  # the largest width is not jammed
            table("e", [10, 20, 30], [0, 4, 4]),
        ]
    )
    found = jamming(curves)
    assert jamming_points(curves) == {"a": 10000, "b": None, "c": 70, "d": None, "e": 20}
    assert {k: j.smallest_jammed for k, j in found.items()} == {
        "a": 10000,
        "b": None,
        "c": 50,
        "d": 50,
        "e": 20,
    }
    assert found["c"].bracket == (2.0, 3.0) and found["e"].bracket == (1.0, 2.0)
    assert found["d"].bracket is None and "above the sweep" in (found["d"].no_bracket or "")


def test_a_width_with_an_unfinished_run_is_not_jammed():
    curves = table("a", [10, 100, 1000], [0, 3, 3], seeds=3).assign(n_runs=[3, 3, 4])
    assert jamming(curves)["a"].n_star is None  # one run of N = 1000 has not finished
    assert jamming(curves)["a"].smallest_jammed == 100
    assert jamming(curves.assign(n_runs=3))["a"].n_star == 100
    # half of the runs: 3/4 at N = 1000 counts the unfinished run as not converged
    assert jamming(table("b", [10, 100], [0, 2], seeds=2).assign(n_runs=[2, 4]))[
        "b"
    ].n_star_half == pytest.approx(100.0)


def test_rows_sharing_an_n_are_ordered_by_width():
    curves = table("a", [10, 20, 20, 30], [0, 4, 4, 4])
    assert jamming(curves)["a"].bracket == (1.0, 2.0)


def test_half_n_star_interpolates_in_log_n():
    curves = pd.concat(
        [
            table("a", [10, 100, 1000, 10000], [0, 1, 3, 4]),  # 0.25 -> 0.75 between 100 and 1000
            table("b", [10, 100, 1000], [0, 2, 4]),  # exactly half at 100
            table("c", [10, 100], [0, 1]),  # never half
            table("d", [10, 100], [3, 4]),  # above half already at the smallest N
        ]
    )
    half = half_jamming_points(curves)
    assert half["a"] == pytest.approx(math.sqrt(100 * 1000))
    assert half["b"] == 100 and half["c"] is None and half["d"] is None


def test_bracket_is_the_width_below_n_star_and_the_width_at_it():
    curves = table("a", [10, 100, 1000, 10000], [0, 1, 4, 4])
    assert jamming_bracket(curves, "a") == (2.0, 3.0)
    with pytest.raises(JamsweepError, match="above the sweep"):
        jamming_bracket(table("b", [10, 100], [0, 3]), "b")
    with pytest.raises(JamsweepError, match="below the sweep"):
        jamming_bracket(table("c", [10, 100], [4, 4]), "c")
    with pytest.raises(JamsweepError, match="has no runs"):
        jamming_bracket(curves, "zz")


def test_n_over_nstar_divides_by_the_rows_own_architecture():
    curves = pd.concat([table("a", [10, 100, 1000], [0, 4, 4]), table("b", [10, 20], [0, 1])])
    out = with_n_over_nstar(curves, jamming_points(curves))
    assert out["n_over_nstar"].iloc[:3].tolist() == [0.1, 1.0, 10.0]
    assert out["n_over_nstar"].iloc[3:].isna().all()


def test_a_gap_between_equal_errors_is_exactly_zero_not_float_residue():
    """Three identical nets with error 1/10: (0.1 + 0.1 + 0.1) / 3 - 0.1 is 1.4e-17 in
    floats, which a log axis would show as a point; the gap is a multiple of 1/(m S)."""
    f = np.tile(np.array([1.0, 1, 1, 1, 1, 1, 1, 1, 1, -1]), (3, 1))
    labels = np.ones(10)
    outputs = WidthOutputs(["a", "b", "c"], f, np.ones(3), labels)
    metrics = pd.DataFrame({"run_id": ["a", "b", "c"], "n_params": 5, "converged": True,
                            "train_error": 0.0, "train_loss": 0.0, "steps": 1})  # fmt: skip
    assert (0.1 + 0.1 + 0.1) / 3 - 0.1 != 0.0
    assert width_curve(metrics, outputs)["gap"] == 0.0
