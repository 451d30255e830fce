"""The jamming line N*(P) (workers/jamming_line.py) on constructed data whose answer is known
independently: every run at N >= c P^a reaches zero loss, none below, so each P's threshold
lies in its bracket (n_below, N*]; the fit must recover a and c within its uncertainty, and
equal a weighted line fit of numpy's (np.polyfit) through the brackets' centres."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from schemas.summary import JAMMING_LINE, Fit, Summary
from workers.jamming_line import ABOVE, BELOW, jamming_lines

N_GRID = [int(round(20 * 1.12**k)) for k in range(60)]  # N of widths 1 .. 60: 20 .. ~16,000


def curves_of(threshold, ps, *, lrs=None, seeds=2, n_grid=N_GRID) -> pd.DataFrame:
    """A curves table: widths 1.. with N = n_grid, every seed converged where
    N >= threshold(P, lr), none below; train_size (and lr_max, with `lrs`) as axes."""
    rows = []
    for lr in lrs or [None]:
        for p in ps:
            point = f"train_size={p}" + (f" lr_max={lr:g}" if lr is not None else "")
            for k, n in enumerate(n_grid):
                jammed = n >= threshold(p, lr)
                rows.append(
                    {"arch": "fc5", "point": point, "train_size": p}
                    | ({"lr_max": lr} if lr is not None else {})
                    | {"width": float(k + 1), "n_params": n, "n_runs": seeds,
                       "n_seeds": seeds, "n_converged": seeds if jammed else 0}
                )  # fmt: skip
    return pd.DataFrame(rows)


def by_hand(threshold_of_p, ps, n_grid=N_GRID):
    """N* and n_below of each P from the grid alone, and numpy's weighted line through the
    brackets' centres in log-log: (a, log c), their unscaled and scaled standard errors."""
    n = np.array(n_grid, float)
    star = np.array([n[n >= threshold_of_p(p)].min() for p in ps])
    below = np.array([n[n < threshold_of_p(p)].max() for p in ps])
    x, y = np.log(ps), (np.log(star) + np.log(below)) / 2
    s = (np.log(star) - np.log(below)) / 2
    values, unscaled = np.polyfit(x, y, 1, w=1 / s, cov="unscaled")
    if len(ps) > 2:
        _, scaled = np.polyfit(x, y, 1, w=1 / s, cov=True)
    else:
        scaled = unscaled
    return star, below, values, np.sqrt(np.diag(unscaled)), np.sqrt(np.diag(scaled))


@pytest.mark.parametrize(
    ("c", "a", "ps"),
    [
        (0.6, 0.9, [50, 100, 200, 400, 800]),
        (3.0, 0.5, [100, 300, 1000, 3000]),
        (0.05, 1.3, [200, 400, 800, 1600, 3200]),
        (0.5, 1.0, [250, 500, 1000]),
    ],
)
def test_the_fit_recovers_a_and_c_of_a_constructed_power_law(c, a, ps):
    threshold = lambda p, lr=None: c * p**a  # noqa: E731
    lines = jamming_lines(curves_of(threshold, ps))
    assert list(lines) == ["fc5"]  # train_size the only axis: the arch names the line
    line = lines["fc5"]
    star, below, (slope, intercept), unscaled, scaled = by_hand(threshold, ps)
    # each P's threshold is inside its bracket, and the points are those of the grid
    for q, t, n_star, n_below in zip(line.points, map(threshold, ps), star, below, strict=True):
        assert q.used and q.n_below < t <= q.n_star
        assert (q.n_star, q.n_below) == (n_star, n_below)
    fit = line.fit
    assert fit.law == JAMMING_LINE and fit.ok and fit.variable == "P"
    assert fit.n_points == len(ps) and fit.dof == len(ps) - 2
    assert fit.n_range == (min(ps), max(ps))
    # the truth within two standard errors (the centres are off by at most the brackets)
    assert abs(fit.params["a"] - a) <= 2 * fit.errors["a"]
    log_c_err = fit.errors["c"] / fit.params["c"]
    assert abs(math.log(fit.params["c"]) - math.log(c)) <= 2 * log_c_err
    # numpy's weighted fit: the same values; errors unscaled, or scaled when chi2/dof > 1
    assert fit.params["a"] == pytest.approx(slope, rel=1e-9)
    assert fit.params["c"] == pytest.approx(math.exp(intercept), rel=1e-9)
    expected = scaled if (fit.chi2_dof or 0) > 1 else unscaled
    assert fit.errors["a"] == pytest.approx(expected[0], rel=1e-9)
    assert log_c_err == pytest.approx(expected[1], rel=1e-9)
    assert not fit.flagged("underdetermined") and not fit.flagged("implausible")
    assert fit.paper == {"a": 1.0}
    assert fit.predict(np.array([ps[0]])) == pytest.approx(fit.params["c"] * ps[0] ** slope)


def test_points_that_scatter_more_than_their_brackets_widen_the_errors():
    """A zigzag N*(P): chi2/dof > 1, so the errors are scaled up by it (numpy's cov=True)."""
    level = {100: 100, 200: 400, 400: 300, 800: 1600, 1600: 1000}
    threshold = lambda p, lr=None: level[p]  # noqa: E731
    fit = jamming_lines(curves_of(threshold, list(level)))["fc5"].fit
    _, _, _, unscaled, scaled = by_hand(threshold, list(level))
    assert fit.chi2_dof > 1
    assert fit.errors["a"] == pytest.approx(scaled[0], rel=1e-9)
    assert fit.errors["a"] > unscaled[0]


def test_two_points_are_fitted_but_flagged_underdetermined_and_one_is_no_fit():
    threshold = lambda p, lr=None: 0.5 * p  # noqa: E731
    two = jamming_lines(curves_of(threshold, [200, 800]))["fc5"].fit
    assert two.ok and two.n_points == 2 and two.dof == 0 and two.chi2_dof is None
    assert two.params["a"] == pytest.approx(1.0, abs=two.errors["a"])
    assert two.flagged("underdetermined") == [
        "underdetermined: 2 parameters on 2 points (0 degrees of freedom)"
    ]
    assert not two.trusted
    one = jamming_lines(curves_of(threshold, [200]))["fc5"].fit
    assert not one.ok and one.n_points == 1
    assert "1 value(s) of P with a bracketed N*; need at least 2" in one.reason


def test_a_p_whose_n_star_is_outside_the_widths_is_left_out_with_why():
    grid = N_GRID[:30]  # N up to ~530
    threshold = {10: 5, 100: 60, 200: 120, 400: 250, 3000: 2000}.get
    line = jamming_lines(curves_of(lambda p, lr=None: threshold(p), list(
        [10, 100, 200, 400, 3000]), n_grid=grid))["fc5"]  # fmt: skip
    why = {q.train_size: q.why for q in line.points}
    assert why == {10: BELOW, 100: None, 200: None, 400: None, 3000: ABOVE}
    low = line.points[0]
    assert low.n_star == grid[0] and low.n_below is None and not low.used
    assert line.points[-1].n_star is None
    assert line.fit.n_points == 3 and line.fit.n_range == (100, 400)


def test_n_star_falling_with_p_is_implausible():
    fit = jamming_lines(curves_of(lambda p, lr=None: 4e4 / p, [100, 200, 400, 800]))["fc5"].fit
    assert fit.params["a"] < 0
    assert fit.flagged("implausible") == [
        f"implausible: a = {fit.params['a']:.3g} <= 0: N* does not grow with P"
    ]
    assert fit.flagged("unlike the paper")  # a = 1 is many sigma away


def test_each_point_of_the_other_axes_has_its_own_line():
    exponent = {0.001: 0.7, 0.01: 1.2}
    threshold = lambda p, lr: 0.3 * p ** exponent[lr]  # noqa: E731
    lines = jamming_lines(curves_of(threshold, [100, 200, 400, 800, 1600], lrs=[0.001, 0.01]))
    assert list(lines) == ["fc5 lr_max=0.001", "fc5 lr_max=0.01"]
    for lr, a in exponent.items():
        fit = lines[f"fc5 lr_max={lr:g}"].fit
        assert abs(fit.params["a"] - a) <= 2 * fit.errors["a"]
        assert {q.series for q in lines[f"fc5 lr_max={lr:g}"].points} == {
            f"fc5 train_size={p} lr_max={lr:g}" for p in [100, 200, 400, 800, 1600]
        }


def test_no_train_size_axis_no_line():
    curves = curves_of(lambda p, lr: 100, [100], lrs=[0.001, 0.01]).drop(columns="train_size")
    curves["point"] = curves["point"].str.replace("train_size=100 ", "")
    assert jamming_lines(curves) == {}


def test_the_line_survives_summary_json():
    line = jamming_lines(curves_of(lambda p, lr=None: p, [100, 200, 400]))
    text = Summary(sweep="s", jamming_line=line).to_json()
    back = Summary.from_json(text).jamming_line["fc5"]
    assert back == line["fc5"] and isinstance(back.fit, Fit)
    assert Summary.from_json('{"sweep": "old"}').jamming_line == {}  # older files still read
