"""workers.fits recovers known laws from synthetic curves, with honest uncertainties."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from schemas.errors import JamsweepError
from schemas.summary import Fit, Summary
from workers.fits import (
    fit_curves,
    fit_divergence,
    fit_error,
    fit_gap,
    fit_gradient,
    fit_variance,
)

N = np.geomspace(1e3, 1e6, 14)


def noisy(y, rel, seed):
    return y * (1 + rel * np.random.default_rng(seed).normal(size=len(y)))


def test_gap_fit_recovers_e0_e1_and_ignores_points_at_or_below_n_star():
    gap = 2.0 * N**-0.5 + 5.0 * N**-0.75
    corrupted = gap.copy()
    corrupted[:4] = 1.0  # the jammed region: must not enter the fit
    fit = fit_gap(N, corrupted, n_min=N[3])
    assert fit.ok and fit.n_points == 10 and fit.n_range == (N[4], N[-1])
    assert fit.params["E0"] == pytest.approx(2.0, rel=1e-6)
    assert fit.params["E1"] == pytest.approx(5.0, rel=1e-5)
    assert np.allclose(fit.predict(N[4:]), gap[4:])


def test_error_fit_recovers_the_plateau_and_both_corrections():
    sem = 0.01 * (1.5 * N**-0.5)
    eps = noisy(0.02 + 1.5 * N**-0.5 - 3.0 * N**-0.75, 0.0, 0)
    fit = fit_error(N, eps, n_min=None, sigma=sem)
    assert fit.ok
    assert fit.params["eps_inf"] == pytest.approx(0.02, rel=1e-6)
    assert fit.params["B0"] == pytest.approx(1.5, rel=1e-5)
    assert fit.params["B1"] == pytest.approx(-3.0, rel=1e-4)


def test_power_law_fits_recover_free_exponents():
    var = fit_variance(N, noisy(3.0 * N**-0.25, 0.01, 1), n_min=None)
    assert var.params["alpha"] == pytest.approx(0.25, abs=3 * var.errors["alpha"] + 1e-3)
    assert var.params["A"] == pytest.approx(3.0, rel=0.05)
    n_star = 1000.0
    n = n_star * (1 + np.geomspace(0.05, 2.5, 10))
    norms = 4.0 * (n / n_star - 1) ** -1.0
    far = np.append(n, [10 * n_star, 20 * n_star])  # beyond the window: must not count
    div = fit_divergence(far, np.append(norms, [1e6, 1e6]), n_star=n_star)
    assert div.ok and div.n_points == 10
    assert div.params["beta"] == pytest.approx(1.0, rel=1e-9)
    assert div.params["C"] == pytest.approx(4.0, rel=1e-9)


def test_reported_uncertainty_matches_the_scatter_of_repeated_fits():
    """The one-sigma error of E0 agrees with the spread of E0 over noise realisations."""
    truth = 2.0 * N**-0.5 + 5.0 * N**-0.75
    estimates, reported = [], []
    for seed in range(200):
        noise = 2e-4 * np.random.default_rng(seed).normal(size=len(N))
        fit = fit_gap(N, truth + noise, n_min=None)
        estimates.append(fit.params["E0"])
        reported.append(fit.errors["E0"])
    spread = float(np.std(estimates))
    assert float(np.median(reported)) == pytest.approx(spread, rel=0.25)
    assert abs(np.mean(estimates) - 2.0) < 3 * spread / math.sqrt(200)


def test_too_few_points_give_a_reason_not_numbers():
    fit = fit_gap(N[:5], N[:5] ** -0.5, n_min=N[2])  # two points above N*
    assert not fit.ok and "2 usable point" in fit.reason and fit.params == {}
    with pytest.raises(JamsweepError, match="was not made .*2 usable point"):
        fit.predict(N)
    assert "no N*" in fit_divergence(N, N, n_star=None).reason
    back = Fit.model_validate_json(fit.model_dump_json())
    assert back == fit


def curves_frame(n_star):
    n = np.geomspace(100, 1e5, 30)
    over = n > n_star
    return pd.DataFrame(
        {
            "n_params": n,
            "n_seeds": 8,
            "gap": np.where(over, 2.0 * n**-0.5 + 5.0 * n**-0.75, 0.3),
            "test_error_mean": 0.05 + 2.0 * n**-0.5 + 5.0 * n**-0.75,
            "test_error_std": 0.01 * n**-0.5,
            "f_var": np.where(over, (3.0 * n**-0.25) ** 2, 50.0),
            "f_norm": np.where(over, 2.0 * np.abs(n / n_star - 1) ** -1.0, 0.1),
            "grad_norm_median": np.where(over, 1.5 + 4.0 * n**-0.25, 9.0),
        }
    )


def test_fit_curves_fits_every_law_above_n_star_only():
    n_star = 400.0
    fits = fit_curves(curves_frame(n_star), n_star)
    assert all(f.ok for f in fits.values())
    assert all(f.n_range[0] > n_star for f in fits.values())
    assert fits["gap"].params["E0"] == pytest.approx(2.0, rel=1e-6)
    assert fits["variance"].params["alpha"] == pytest.approx(0.25, rel=1e-6)
    assert fits["divergence"].params["beta"] == pytest.approx(1.0, rel=1e-6)
    assert fits["error"].params["eps_inf"] == pytest.approx(0.05, rel=1e-6)
    assert fits["gradient"].params["C0"] == pytest.approx(1.5, rel=1e-6)
    assert fits["gradient"].params["C1"] == pytest.approx(4.0, rel=1e-6)
    assert all(not f.ok for f in fit_curves(curves_frame(n_star), None).values())


@pytest.mark.parametrize("weighted", [False, True])
def test_linear_least_squares_equal_scipys_curve_fit(weighted):
    """The closed-form fits give scipy's curve_fit values and errors (absolute_sigma=False)."""
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(3)
    truth = 0.02 + 1.5 * N**-0.5 - 3.0 * N**-0.75
    sigma = 0.05 * truth * (1 + rng.random(len(N))) if weighted else None
    eps = truth * (1 + 0.05 * rng.normal(size=len(N)))
    fit = fit_error(N, eps, n_min=None, sigma=sigma)

    def law(n, eps_inf, b0, b1):
        return eps_inf + b0 * n**-0.5 + b1 * n**-0.75

    values, cov = curve_fit(law, N, eps, p0=np.zeros(3), sigma=sigma, absolute_sigma=False)
    names = ("eps_inf", "B0", "B1")
    assert np.allclose([fit.params[k] for k in names], values, rtol=1e-6)
    assert np.allclose([fit.errors[k] for k in names], np.sqrt(np.diag(cov)), rtol=1e-5)
    line, line_cov = curve_fit(lambda x, a, b: a + b * x, np.log(N), np.log(eps), p0=[0, 0])
    var = fit_variance(N, eps, n_min=None)
    assert var.params["alpha"] == pytest.approx(-line[1], rel=1e-6)  # curve_fit iterates
    assert var.errors["alpha"] == pytest.approx(math.sqrt(line_cov[1, 1]), rel=1e-6)


def test_points_that_do_not_fix_the_parameters_give_a_reason_not_numbers():
    n = np.full(5, 1e4)  # one N five times: the two columns of the gap law are collinear
    fit = fit_gap(n, np.linspace(0.01, 0.02, 5), n_min=None)
    assert not fit.ok and "do not fix" in fit.reason and fit.params == {}
    assert not fit_variance(n, np.linspace(1, 2, 5), n_min=None).ok
    assert fit_gap(np.array([1e4, 1e4, 4e4]), np.array([0.1, 0.2, 0.05]), n_min=None).ok


def test_summary_json_round_trips_with_nan_and_keeps_the_file_format():
    fit = fit_gap(N, 2.0 * N**-0.5 + 5.0 * N**-0.75, n_min=None)
    nan_fit = fit.model_copy(update={"errors": {"E0": float("nan"), "E1": 1.0}})
    summary = Summary(
        sweep="s",
        n_runs=8,
        n_done=6,
        ensemble_over="converged",
        max_subsets=100,
        n_star={"fc5": 120, "cnn": None},
        n_star_half={"fc5": 110.5, "cnn": None},
        n_star_bracket={"fc5": (96.0, 120.0), "cnn": None},
        fits={"fc5": {"gap": nan_fit}},
        reduced_at="2026-12-01T00:00:00Z",
    )
    text = summary.to_json()
    raw = json.loads(text)
    assert list(raw) == [  # the file's keys: those it has always had first, in their order
        "sweep", "n_runs", "n_done", "ensemble_over", "max_subsets", "n_star", "n_star_half",
        "n_star_bracket", "smallest_jammed_n", "fits", "reduced_at", "budget", "notes",
        "jamming_line",
    ]  # fmt: skip
    gap = raw["fits"]["fc5"]["gap"]
    assert list(gap) == [
        "law", "params", "errors", "n_points", "n_range", "reason", "dof", "r2", "chi2_dof",
        "flags", "paper", "variable",
    ]  # fmt: skip
    assert raw["ensemble_over"] == "converged" and text.startswith('{\n  "sweep": "s",\n')
    assert raw["n_star"] == {"fc5": 120, "cnn": None} and '"fc5": 120,' in text  # an int stays
    assert raw["n_star_bracket"]["fc5"] == [96.0, 120.0]
    assert math.isnan(gap["errors"]["E0"]) and "NaN" in text  # as json.dumps writes it
    back = Summary.from_json(text)
    assert back.fits["fc5"]["gap"].params == fit.params
    assert math.isnan(back.fits["fc5"]["gap"].errors["E0"])
    assert back.model_dump(exclude={"fits"}) == summary.model_dump(exclude={"fits"})


def test_an_older_summary_reads_and_a_broken_one_says_what_to_do():
    old_fit = {"law": "x", "params": {"E0": 1.0}, "errors": {"E0": 0.1}, "n_points": 4}
    older = {
        "sweep": "s",
        "n_runs": 4,
        "n_done": 4,
        "n_star": {"fc5": 100},
        "fits": {"fc5": {"gap": old_fit}},
    }
    back = Summary.from_json(json.dumps(older))  # before n_star_bracket and the others
    assert back.n_star == {"fc5": 100} and back.n_star_bracket == {}
    assert back.ensemble_over == "converged" and back.budget == {} and back.notes == []
    old = back.fits["fc5"]["gap"]  # a fit from before its quality was recorded
    assert old.dof is None and old.flags == [] and old.trusted
    for broken in ('{"sweep": "s", "ensemble_over": "some"}', "{not json"):
        with pytest.raises(JamsweepError, match=r"x/summary.json cannot be read .*jamsweep reduce"):
            Summary.from_json(broken, source="x/summary.json")


# -- the quality of a fit ---------------------------------------------------------------


def test_quality_of_a_weighted_fit_matches_a_hand_computation():
    """dof = points - parameters; chi2/dof and R^2 recomputed from the residuals by a loop."""
    rng = np.random.default_rng(11)
    sigma = 0.002 * (1 + rng.random(len(N)))
    eps = 0.03 + 1.5 * N**-0.5 - 3.0 * N**-0.75 + sigma * rng.normal(size=len(N))
    fit = fit_error(N, eps, n_min=None, sigma=sigma)
    predicted = fit.predict(N)
    chi2 = sum(((e - p) / s) ** 2 for e, p, s in zip(eps, predicted, sigma, strict=True))
    w = 1 / sigma**2
    centre = sum(w * eps) / sum(w)
    total = sum(wi * (e - centre) ** 2 for wi, e in zip(w, eps, strict=True))
    assert fit.dof == len(N) - 3
    assert fit.chi2_dof == pytest.approx(chi2 / (len(N) - 3), rel=1e-9)
    assert fit.r2 == pytest.approx(1 - sum(w * (eps - predicted) ** 2) / total, rel=1e-9)
    assert fit.flags == [] and fit.trusted


def test_chi2_per_dof_is_near_one_when_the_points_have_the_errors_they_say():
    """Over many noise draws with the stated sigma, mean chi2/dof is 1 (a known law)."""
    sigma = 0.002 * np.ones(len(N))
    truth = 2.0 * N**-0.5 + 5.0 * N**-0.75
    values = [
        fit_gap(
            N, truth + sigma * np.random.default_rng(s).normal(size=len(N)), n_min=None, sigma=sigma
        ).chi2_dof
        for s in range(300)
    ]
    # chi^2 with 12 dof has standard deviation sqrt(2/12) per dof: the mean of 300 is 1 +- 0.024
    assert float(np.mean(values)) == pytest.approx(1.0, abs=0.08)


def test_three_parameters_on_four_points_are_flagged_underdetermined():
    n = np.array([344.0, 708.0, 1200.0, 2568.0])
    fit = fit_error(n, 0.02 + 1.5 * n**-0.5 - 3.0 * n**-0.75, n_min=None)
    assert fit.ok and fit.dof == 1 and not fit.trusted
    assert fit.flagged("underdetermined") == [
        "underdetermined: 3 parameters on 4 points (1 degree of freedom)"
    ]


def test_the_demos_error_fit_is_flagged_implausible_its_asymptote_lies_above_the_data():
    """The demo of issue 16: errors 0.186, 0.162, 0.147, 0.146 at N = 344 ... 2568 (above
    N* = 273), each known to +-0.002: eps_inf comes out above the three largest-N errors."""
    n = np.array([344.0, 708.0, 1200.0, 2568.0])
    eps = np.array([0.186, 0.162, 0.147, 0.146])
    fit = fit_error(n, eps, n_min=None, sigma=np.full(4, 0.002))
    assert fit.params["eps_inf"] > 0.147  # the law bends back up to its asymptote
    [why] = fit.flagged("implausible")
    assert "eps_inf" in why and "lies above" in why and "of the 4 fitted errors" in why
    assert fit.flagged("underdetermined") and not fit.trusted


def test_an_exponent_far_from_the_papers_is_said_so_and_one_near_it_is_not():
    far = fit_variance(N, noisy(3.0 * N**-0.82, 0.01, 2), n_min=None)
    [flag] = far.flagged("unlike the paper")
    assert flag.startswith("unlike the paper: alpha = 0.82") and "the paper's 0.25" in flag
    assert far.trusted  # well fixed and possible: only unlike the paper
    near = fit_variance(N, noisy(3.0 * N**-0.25, 0.01, 3), n_min=None)
    assert near.flags == [] and near.paper == {"alpha": 0.25}


def test_a_variance_that_grows_with_n_or_a_negative_asymptote_is_implausible():
    grows = fit_variance(N, 0.01 * N**0.3, n_min=None)
    assert grows.flagged("implausible") and grows.params["alpha"] == pytest.approx(-0.3)
    negative = fit_gradient(N, -0.5 + 30.0 * N**-0.25, n_min=None)
    assert negative.params["C0"] == pytest.approx(-0.5, rel=1e-6)
    assert "C0 = -0.5 of a norm is below 0" in negative.flagged("implausible")[0]
    good = fit_gradient(N, noisy(1.5 + 4.0 * N**-0.25, 0.002, 4), n_min=None)
    assert good.trusted and good.params["C1"] == pytest.approx(4.0, rel=0.1)


def test_a_parameter_the_points_do_not_fix_is_flagged():
    """A gap fit on points that alternate around zero: E0's error exceeds E0."""
    fit = fit_gap(N[:6], 1e-3 * (-1.0) ** np.arange(6), n_min=None)
    assert any("E0 =" in f and "is not fixed" in f for f in fit.flagged("underdetermined"))
