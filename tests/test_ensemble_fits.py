"""Fig. 4 with the finite number M of seeds in view (workers.ensembles, .ensemble_fits):
laws recovered from rows drawn from them, and from synthetic outputs of known variance."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from schemas.summary import Fit
from workers.ensemble_fits import _profile_fit, fit_ensembles, fit_finite_m, with_excess_inf
from workers.ensembles import ensemble_curve
from workers.outputs import WidthOutputs

WIDTHS = [100, 200, 400, 800]


def law_rows(b: float, m: int, noise: float, seed: int) -> pd.DataFrame:
    """excess(n) = B_N (n^-b - M^-b) + noise, n = 1..M, for each width."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, w in enumerate(WIDTHS):
        amp = 0.05 / (k + 1)
        for n in range(1, m + 1):
            exact = amp * (n**-b - m**-b)
            rows.append(
                {
                    "n": n,
                    "n_members": m,
                    "n_params": w,
                    "y": exact + (noise * rng.normal() if n < m else 0.0),
                }
            )
    return pd.DataFrame(rows)


def fit_rows(rows: pd.DataFrame) -> Fit:
    return fit_finite_m(
        rows["n"],
        rows["n_members"],
        rows["n_params"],
        rows["y"],
        law="x",
        exponent="b",
        amplitude="B",
        paper=1.0,
    )


def test_the_exponent_of_a_finite_m_law_is_recovered_and_a_naive_fit_is_not():
    rows = law_rows(1.0, 8, 0.0, 0)
    fit = fit_rows(rows)
    assert fit.params["b"] == pytest.approx(1.0, rel=1e-6)
    for k, w in enumerate(WIDTHS):
        assert fit.amplitude(w) == pytest.approx(0.05 / (k + 1), rel=1e-6)
    assert fit.dof == 4 * 7 - 5 and fit.r2 == pytest.approx(1.0)
    # what the issue saw: a power law read off the excess over the M-seed average is wrong
    first = rows[(rows["n_params"] == 100) & (rows["n"] < 8)]
    naive = -np.polyfit(np.log(first["n"]), np.log(first["y"]), 1)[0]
    assert abs(naive - 1.0) > 0.2


def test_the_exponents_error_matches_its_scatter_and_scipys_curve_fit():
    from scipy.optimize import curve_fit

    estimates, reported = [], []
    for seed in range(60):
        fit = fit_rows(law_rows(1.0, 8, 2e-4, seed))
        estimates.append(fit.params["b"])
        reported.append(fit.errors["b"])
    # independent noise on every row: the fit's error is right, the jackknife's no smaller
    ratio = float(np.median(reported)) / float(np.std(estimates))
    assert 0.8 < ratio < 2.0, ratio
    assert abs(np.mean(estimates) - 1.0) < 4 * np.std(estimates) / math.sqrt(60)

    rows = law_rows(1.0, 8, 2e-4, 99)
    rows = rows[rows["n"] < rows["n_members"]]
    idx = rows["n_params"].map({w: i for i, w in enumerate(WIDTHS)}).to_numpy()

    def law(x, b, *amps):
        n, m = x
        return np.array(amps)[idx] * (n**-b - m**-b)

    values, cov = curve_fit(
        law,
        (rows["n"].to_numpy(float), rows["n_members"].to_numpy(float)),
        rows["y"].to_numpy(),
        p0=[0.8, *[0.01] * 4],
    )
    args = (rows["n"], rows["n_members"], rows["n_params"], rows["y"])
    own = _profile_fit(*args, law="x", exponent="b", amplitude="B", paper=1.0, power=1.0)
    assert own.params["b"] == pytest.approx(values[0], rel=1e-5)
    assert own.errors["b"] == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-3)
    assert own.errors["B(N=400)"] == pytest.approx(math.sqrt(cov[3, 3]), rel=1e-3)
    fit = fit_rows(rows)  # the reported error of b: the larger of that and the jackknife's
    assert fit.errors["b"] >= own.errors["b"] and fit.params == own.params


def test_too_few_seeds_give_a_reason_and_barely_enough_are_underdetermined():
    few = fit_rows(law_rows(1.0, 3, 0.0, 0)[lambda r: r["n_params"] == 100])
    assert not few.ok and "2 usable point(s) for 2 parameters" in few.reason
    two = fit_rows(law_rows(1.0, 3, 1e-4, 0)[lambda r: r["n_params"] <= 200])
    assert two.ok and two.dof == 1
    first, second = two.flagged("underdetermined")
    assert first.startswith("underdetermined: 2 width(s) above N*: the error of b is the fit's")
    assert second == "underdetermined: 3 parameters on 4 points (1 degree of freedom)"


def test_points_that_follow_no_power_of_n_are_implausible():
    rows = law_rows(1.0, 8, 0.0, 0).assign(y=lambda r: np.where(r["n"] < 8, 0.01, 0.0))
    fit = fit_rows(rows)  # flat up to M: the best exponent runs to the edge of the search
    assert any("edge of the range searched" in f for f in fit.flagged("implausible"))
    negative = fit_rows(law_rows(1.0, 8, 0.0, 0).assign(y=lambda r: -r["y"]))
    assert any("B < 0 at N = 100, 200, 400, 800" in f for f in negative.flagged("implausible"))


def test_excess_error_inf_adds_the_fitted_tail_at_m():
    rows = law_rows(1.0, 8, 0.0, 0).rename(columns={"y": "excess_error"})
    fit = fit_rows(rows.rename(columns={"excess_error": "y"}))
    out = with_excess_inf(rows.assign(excess_error_inf=math.nan), fit)
    for r in out.itertuples():
        amp = 0.05 / (WIDTHS.index(r.n_params) + 1)
        assert r.excess_error_inf == pytest.approx(amp * r.n**-1.0, rel=1e-6)  # = B n^-b
    flagged = fit.model_copy(update={"flags": ["implausible: made up"]})
    assert (
        with_excess_inf(rows.assign(excess_error_inf=math.nan), flagged)["excess_error_inf"]
        .isna()
        .all()
    )  # no extrapolation from a fit that is not trusted


# -- from outputs of known variance ----------------------------------------------------------

SIGMAS = [0.3, 0.4, 0.5, 0.6]
M, S = 10, 12000


@pytest.fixture(scope="module")
def known():
    """M seeds at four widths: f_i(x) = g(x) + sigma_N eta_i(x), eta ~ N(0, 1) independent,
    ||grad f|| = 2; labels sign(g + xi), so g is the best boundary (Bayes) and the error
    of the infinite ensemble, sign(g), is known; so is the expected error of the average
    of n seeds on each test point: Phi(-y g sqrt(n) / sigma)."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    g = rng.normal(size=S)
    labels = np.where(g + rng.normal(size=S) > 0, 1, -1)
    rows, expected = [], {}
    for k, sigma in enumerate(SIGMAS):
        f = g + sigma * rng.normal(size=(M, S))
        out = WidthOutputs([f"r{i}" for i in range(M)], f, np.full(M, 2.0), labels)
        rows += [
            {"arch": "a", "width": k, "n_params": WIDTHS[k], **r}
            for r in ensemble_curve(out, np.arange(M))
        ]
        expected[WIDTHS[k]] = [
            norm.cdf(-labels * g * math.sqrt(n) / sigma).mean() for n in range(1, M + 1)
        ]
    e_inf = float(np.mean(labels * g < 0))
    return pd.DataFrame(rows), expected, e_inf


def test_delta_recovers_the_known_variance_and_the_inverse_square_root(known):
    ensemble, _, _ = known
    fits = fit_ensembles(ensemble, n_star=50)
    delta = fits["ensemble_delta"]
    assert delta.params["g"] == pytest.approx(0.5, abs=3 * delta.errors["g"] + 1e-3)
    for w, sigma in zip(WIDTHS, SIGMAS, strict=True):
        # A_N = sigma^2 / ||grad f||^2, known to the sampling error of M S normal draws
        assert delta.amplitude(w) == pytest.approx(sigma**2 / 4, rel=0.03)
        rows = ensemble[ensemble["n_params"] == w]
        assert np.allclose(rows["delta_inf"], sigma / 2 / np.sqrt(rows["n"]), rtol=0.03)


def test_the_error_exponent_is_that_of_the_exact_expected_curve_and_eps_inf_is_found(known):
    """The exact expectation E(n) of the n-average's error is a sum of normal tails; the fit
    to the measured rows agrees with the same fit to E(n) - E(M) within its errors, and its
    extrapolated eps_inf with the error of sign(g)."""
    ensemble, expected, e_inf = known
    fit = fit_ensembles(ensemble, n_star=50)["ensemble_error"]
    exact = pd.DataFrame(
        [
            {"n": n, "n_members": M, "n_params": w, "y": e[n - 1] - e[-1]}
            for w, e in expected.items()
            for n in range(1, M + 1)
        ]
    )
    truth = fit_rows(exact)
    # the error of b is the jackknife's over the 4 widths: their seeds are independent
    assert fit.params["b"] == pytest.approx(truth.params["b"], abs=3 * fit.errors["b"])
    assert fit.errors["b"] < 0.25
    assert 0.7 < truth.params["b"] < 1.1  # this law's effective exponent: near the paper's 1
    for w in WIDTHS:
        rows = ensemble[ensemble["n_params"] == w]
        eps_inf = rows["test_error_mean"].iloc[-1] - fit.amplitude(w) * M ** -fit.params["b"]
        assert eps_inf == pytest.approx(e_inf, abs=0.005)


def test_delta_over_every_subset_is_flagged_as_holding_by_construction():
    """With every subset of M = 4 seeds averaged, delta_n^2 = s^2 (1/n - 1/M) exactly, for
    seeds that are anything but independent draws (here: one seed repeated with a shift)."""
    rng = np.random.default_rng(1)
    rows = []
    for w in WIDTHS:
        base = rng.normal(size=500)
        f = np.stack([base + k * 0.3 for k in range(4)])  # far from independent noise
        out = WidthOutputs([f"r{k}" for k in range(4)], f, np.ones(4), np.sign(base))
        rows += [
            {"arch": "a", "width": w, "n_params": w, **r} for r in ensemble_curve(out, np.arange(4))
        ]
    ensemble = pd.DataFrame(rows)
    delta = fit_ensembles(ensemble, n_star=50)["ensemble_delta"]
    assert delta.params["g"] == pytest.approx(0.5, abs=1e-9)
    [flag] = delta.flagged("by construction")
    assert "g = 1/2 is not a measurement" in flag and delta.trusted
    sampled = fit_ensembles(known_rows_sampled(), n_star=50)["ensemble_delta"]
    assert not sampled.flagged("by construction")


def known_rows_sampled() -> pd.DataFrame:
    """M = 10 seeds with at most 20 subsets per n: most n are sampled, not exact."""
    rng = np.random.default_rng(2)
    rows = []
    for w in WIDTHS[:3]:
        f = rng.normal(size=(10, 300))
        out = WidthOutputs([f"r{k}" for k in range(10)], f, np.ones(10), np.ones(300))
        rows += [{"arch": "a", "width": w, "n_params": w, **r}
                 for r in ensemble_curve(out, np.arange(10), max_subsets=20)]  # fmt: skip
    return pd.DataFrame(rows)
