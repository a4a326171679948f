"""Statistics of suite.analysis.stats against SciPy references on random tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from suite.analysis import stats as S


def _table(rng, m=12, D=4, noise=0.5):
    x = rng.normal(size=m)
    Y = 0.7 * x[:, None] + rng.normal(0, noise, (m, D)) + rng.normal(0, 1, D)
    return x, Y


# --------------------------------------------------------------------------- logit


def test_logit_edges_finite_and_symmetric():
    z = S.logit([0.0, 50.0, 100.0])
    assert np.all(np.isfinite(z))
    assert z[1] == 0.0
    assert z[0] == pytest.approx(-z[2])
    assert z[2] == pytest.approx(math.log((1 - S.LOGIT_EPS) / S.LOGIT_EPS))


def test_logit_matches_scipy_inside_and_keeps_nan():
    p = np.array([1.0, 12.5, 73.0, 99.0])
    np.testing.assert_allclose(S.logit(p), st.logistic.ppf(p / 100), rtol=1e-12)
    assert np.isnan(S.logit([np.nan]))[0]
    np.testing.assert_allclose(S.expit_percent(S.logit(p)), p, rtol=1e-12)


def test_logit_count_rule():
    # (k + 0.5) / (n + 1): 0 of 10 -> 0.5/11, 10 of 10 -> 10.5/11
    z = S.logit([0.0, 100.0], n=10)
    np.testing.assert_allclose(z, [math.log(0.5 / 10.5), math.log(10.5 / 0.5)])


# --------------------------------------------------------------------------- correlations


@pytest.mark.parametrize("seed", range(3))
def test_pearson_spearman_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 9))
    y = x + rng.normal(size=(5, 9))
    y[:, :3] = np.round(y[:, :3])  # ties for Spearman
    x[0, :4] = 1.0
    for i in range(5):
        assert S.pearson(x[i], y[i]) == pytest.approx(st.pearsonr(x[i], y[i]).statistic, abs=1e-12)
        assert S.spearman(x[i], y[i]) == pytest.approx(st.spearmanr(x[i], y[i]).statistic,
                                                       abs=1e-12)
    np.testing.assert_allclose(S.pearson(x, y), [st.pearsonr(a, b).statistic for a, b in zip(x, y)])


def test_pearson_constant_is_nan():
    assert np.isnan(S.pearson(np.ones(5), np.arange(5.0)))


# --------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("seed", range(3))
def test_bca_correlation_matches_scipy_bootstrap(seed):
    rng = np.random.default_rng(seed)
    x, Y = _table(rng, m=10, D=3)
    ours = S.correlate_columns(x, Y, n_resamples=999, seed=seed)
    for k in range(Y.shape[1]):
        for name in ("pearson", "spearman"):
            fn = S.CORRELATIONS[name]
            ref = st.bootstrap((x, Y[:, k]), fn, paired=True, vectorized=True, method="BCa",
                               n_resamples=999, rng=np.random.default_rng(seed))
            ci = ours[k][f"{name}_ci"]
            assert ci[0] == pytest.approx(ref.confidence_interval.low, abs=1e-10)
            assert ci[1] == pytest.approx(ref.confidence_interval.high, abs=1e-10)
            assert ours[k][name] == pytest.approx(fn(x, Y[:, k]), abs=1e-12)


def test_bca_mean_over_datasets_matches_scipy():
    rng = np.random.default_rng(7)
    d = rng.exponential(size=(2, 15))  # skewed: BCa differs from percentile
    ours = S.mean_ci_over_datasets(d, n_resamples=1999, confidence=0.9, seed=3)
    for k in range(2):
        ref = st.bootstrap((d[k],), np.mean, method="BCa", n_resamples=1999,
                           confidence_level=0.9, rng=np.random.default_rng(3))
        assert ours["low"][k] == pytest.approx(ref.confidence_interval.low, abs=1e-10)
        assert ours["high"][k] == pytest.approx(ref.confidence_interval.high, abs=1e-10)
        assert ours["estimate"][k] == pytest.approx(d[k].mean())


def test_two_way_bca_matches_scipy_two_sample_bootstrap():
    # Resampling models and datasets independently is SciPy's multi-sample bootstrap over the
    # two index sets (same draws, jackknife summed over both samples).
    rng = np.random.default_rng(11)
    x, Y = _table(rng, m=9, D=5)
    ours = S.aggregate_correlation(x, Y, two_way=True, n_resamples=999, seed=2)

    def ref_stat(im, idd, axis=-1):
        im2, idd2 = np.atleast_2d(im), np.atleast_2d(idd)
        R = max(im2.shape[0], idd2.shape[0])
        im2 = np.broadcast_to(im2, (R, im2.shape[1]))
        idd2 = np.broadcast_to(idd2, (R, idd2.shape[1]))
        means = Y[im2[:, :, None], idd2[:, None, :]].mean(axis=-1)
        r = S.pearson(x[im2], means, axis=1)
        return r if np.ndim(im) > 1 or np.ndim(idd) > 1 else r[0]

    ref = st.bootstrap((np.arange(9), np.arange(5)), ref_stat, vectorized=True, method="BCa",
                       n_resamples=999, rng=np.random.default_rng(2))
    assert ours["pearson_ci"][0] == pytest.approx(ref.confidence_interval.low, abs=1e-10)
    assert ours["pearson_ci"][1] == pytest.approx(ref.confidence_interval.high, abs=1e-10)


def test_adjusted_equals_mean_when_complete_and_handles_missing():
    rng = np.random.default_rng(5)
    x, Y = _table(rng, m=8, D=4)
    a = S.aggregate_correlation(x, Y, n_resamples=200)
    b = S.aggregate_correlation(x, Y, adjusted=True, n_resamples=200)
    assert a["pearson"] == pytest.approx(b["pearson"])
    Y[0, 1] = np.nan
    c = S.aggregate_correlation(x, Y, adjusted=True, n_resamples=200)
    assert c["pearson"] is not None and c["n_models"] == 8
    # adjusted score = mean over available datasets of (y - dataset mean over present models)
    cen = Y - np.nanmean(Y, axis=0)
    np.testing.assert_allclose(c["scores"], np.nanmean(cen, axis=1))


# --------------------------------------------------------------------------- permutation tests


@pytest.mark.parametrize("n", [5, 11])
@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_permutation_pvalue_matches_scipy(n, method):
    # n = 5: 120 permutations <= 499, both enumerate exactly; n = 11: same random draws.
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = 0.4 * x + rng.normal(size=n)

    def ref_stat(a, axis=-1):
        if method == "pearson":
            return S.pearson(a, y, axis=axis)
        a2 = np.atleast_2d(a)
        out = np.array([st.spearmanr(r, y).statistic for r in a2])
        return out if a.ndim > 1 else out[0]

    ref = st.permutation_test((x,), ref_stat, permutation_type="pairings", vectorized=True,
                              n_resamples=499, rng=np.random.default_rng(3))
    ours = S.permutation_pvalues(x, y[:, None], method, n_resamples=499, seed=3)[0]
    assert ours == pytest.approx(ref.pvalue, abs=1e-12)


# --------------------------------------------------------------------------- model comparisons


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> *4, *3, *2, *1 = 0.02, 0.03, 0.06, 0.04 -> cummax
    np.testing.assert_allclose(S.holm(p), [0.03, 0.06, 0.06, 0.02])


def test_worse_than_best_uses_paired_t_and_holm():
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(4, 6))
    Y[2] += 3.0  # clearly best
    Y[0] = Y[2] - 2.0 + rng.normal(0, 0.1, 6)  # clearly worse
    res = S.worse_than_best(["a", "b", "c", "d"], Y)
    assert res["best"] == "c"
    others = [0, 1, 3]
    p = [st.ttest_rel(Y[2], Y[i]).pvalue for i in others]
    got = {c["model"]: c for c in res["comparisons"]}
    for i, pi, adj in zip(others, p, S.holm(p)):
        name = "abcd"[i]
        assert got[name]["p_value"] == pytest.approx(pi)
        assert got[name]["p_holm"] == pytest.approx(adj)
    assert got["a"]["worse"]


# --------------------------------------------------------------------------- convergence


def test_convergence_speedup_interpolates():
    scratch = [(0, 10.0), (100, 40.0), (200, 60.0), (300, 60.0)]
    finetune = [(0, 10.0), (50, 50.0), (100, 70.0)]
    res = S.convergence_speedup(finetune, scratch)
    assert res["target"] == 60.0
    assert res["steps_scratch"] == 200.0  # first reached at 200
    assert res["steps_finetune"] == pytest.approx(75.0)  # halfway between 50 and 100
    assert res["speedup"] == pytest.approx(200 / 75)
    assert S.convergence_speedup([(0, 1.0), (10, 2.0)], scratch)["speedup"] is None


def test_bench_bootstrap_runs():
    res = S.bench_bootstrap(n_models=5, n_datasets=3, n_settings=1, n_resamples=100)
    assert res["seconds"] > 0 and res["n_resamples"] == 100


# --------------------------------------------------------------------------- BCa terms

# Seven models whose Pearson r (0.89) sits low in its own bootstrap distribution: z0 ≈ -1.0, so
# the BCa interval ends near the median of the replicates (α₂ ≈ 0.46) — tight only because it
# is shifted into the lower tail. (A bivariate t3 draw, rounded.)
X7 = np.array([-1.04, 1.47, -0.34, 3.76, -0.04, -0.3, 0.69])
Y7 = np.array([-2.38, 1.5, -0.67, 2.26, 0.02, 0.15, 0.6])


def _slow_bca_terms(theta_hat, reps, jack, confidence=0.95):
    """z0, a, α₁, α₂ of one statistic by Efron & Tibshirani (1993) eq. 14.14-14.15, looped."""
    below = sum(1.0 if t < theta_hat else 0.5 if t == theta_hat else 0.0 for t in reps)
    z0 = st.norm.ppf(below / len(reps))
    n = len(jack)
    mean = sum(jack) / n
    u = [(n - 1) * (mean - j) for j in jack]
    a = (sum(v ** 3 for v in u) / n ** 3) / (6 * (sum(v ** 2 for v in u) / n ** 2) ** 1.5)
    z = st.norm.ppf([(1 - confidence) / 2, (1 + confidence) / 2])
    alpha = st.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    return z0, a, alpha


@pytest.mark.parametrize("seed", range(3))
def test_percentile_interval_matches_scipy_bootstrap(seed):
    # Same seed, same draws as scipy.stats.bootstrap(method="percentile").
    rng = np.random.default_rng(100 + seed)
    x, Y = _table(rng, m=9, D=2)
    ours = S.correlate_columns(x, Y, n_resamples=999, confidence=0.9, seed=seed)
    for k in range(Y.shape[1]):
        ref = st.bootstrap((x, Y[:, k]), lambda a, b, axis=-1: S.pearson(a, b, axis=axis),
                           paired=True, vectorized=True, method="percentile", n_resamples=999,
                           confidence_level=0.9, rng=np.random.default_rng(seed))
        assert ours[k]["pearson_ci_pct"][0] == pytest.approx(ref.confidence_interval.low,
                                                             abs=1e-10)
        assert ours[k]["pearson_ci_pct"][1] == pytest.approx(ref.confidence_interval.high,
                                                             abs=1e-10)


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_intervals_from_our_replicates_match_scipy(method):
    # Fresh data; SciPy is handed our own bootstrap distribution (bootstrap_result with
    # n_resamples=0), so both compute the interval from the same replicates.
    rng = np.random.default_rng(42)
    x = rng.normal(size=11)
    y = 0.6 * x + rng.normal(size=11)

    def stat(im):
        return S.pearson(x[im], y[im])[:, None]

    ours = S.bootstrap_bca(stat, (11,), n_resamples=1500, seed=9)

    class Prior:
        bootstrap_distribution = ours["replicates"][:, 0]

    ref = st.bootstrap((x, y), lambda a, b, axis=-1: S.pearson(a, b, axis=axis), paired=True,
                       vectorized=True, method=method, n_resamples=0, bootstrap_result=Prior)
    lo, hi = ("low", "high") if method == "BCa" else ("pct_low", "pct_high")
    assert ours[lo][0] == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours[hi][0] == pytest.approx(ref.confidence_interval.high, abs=1e-12)


def test_bca_terms_match_slow_reference():
    rng = np.random.default_rng(3)
    x = rng.exponential(size=13)
    y = x + rng.normal(0, 0.5, 13)

    def stat(im):
        return S.pearson(x[im], y[im])[:, None]

    ours = S.bootstrap_bca(stat, (13,), n_resamples=800, confidence=0.9, seed=4)
    jack = [S.pearson(np.delete(x, i), np.delete(y, i)) for i in range(13)]
    z0, a, alpha = _slow_bca_terms(ours["estimate"][0], ours["replicates"][:, 0], jack, 0.9)
    assert ours["z0"][0] == pytest.approx(z0, abs=1e-12)
    assert ours["a"][0] == pytest.approx(a, abs=1e-12)
    assert [ours["alpha_low"][0], ours["alpha_high"][0]] == pytest.approx(alpha, abs=1e-12)
    # the BCa ends are those quantiles, the percentile ends the nominal ones
    reps = ours["replicates"][:, 0]
    assert ours["low"][0] == pytest.approx(np.quantile(reps, alpha[0]), abs=1e-12)
    assert ours["high"][0] == pytest.approx(np.quantile(reps, alpha[1]), abs=1e-12)
    assert ours["pct_low"][0] == pytest.approx(np.quantile(reps, 0.05), abs=1e-12)
    assert ours["pct_high"][0] == pytest.approx(np.quantile(reps, 0.95), abs=1e-12)


def test_acceleration_never_exceeds_one_sixth():
    # |a| = |Σ U³| / (6 (Σ U²)^{3/2}) <= 1/6: one dominant leave-one-out value is the extreme.
    rng = np.random.default_rng(0)
    jack = rng.standard_t(1, size=(9, 500))  # (n, K) heavy-tailed jackknife values
    jack[:, 0] = [0.0] * 8 + [1e6]  # one model carries everything
    t = S.bca_terms(np.zeros(500), rng.normal(size=(50, 500)), [jack])
    assert np.all(np.abs(t["a"]) <= 1 / 6)
    assert abs(t["a"][0]) == pytest.approx((9 - 2) / (6 * math.sqrt(9 * 8)), rel=1e-9)


# --------------------------------------------------------------------------- BCa flags


def test_bca_checks_thresholds():
    B = 2000

    def which(z0=0.0, a=0.0, lo=0.025, hi=0.975):
        return {k for k, v in S.bca_checks(z0, a, lo, hi, B).items() if v}

    assert which() == set()
    assert which(z0=S.BCA_Z0_MAX) == set() and which(z0=-S.BCA_Z0_MAX - 1e-9) == {"z0"}
    assert which(z0=np.inf) == {"z0"} and which(z0=np.nan) == set()
    assert which(a=S.BCA_A_MAX) == set() and which(a=-S.BCA_A_MAX - 1e-9) == {"a"}
    assert which(lo=S.BCA_ALPHA_LOW_MAX) == set() and which(lo=0.26) == {"range"}
    assert which(hi=S.BCA_ALPHA_HIGH_MIN) == set() and which(hi=0.74) == {"range"}
    assert which(lo=1.0 / B) == set() and which(lo=0.9 / B) == {"resolution"}
    assert which(hi=1 - 0.9 / B) == {"resolution"}
    # vectorised: one flag per element
    got = S.bca_checks(np.array([0.0, 1.0]), np.zeros(2), np.full(2, 0.025), np.full(2, 0.975), B)
    assert got["z0"].tolist() == [False, True]
    reasons = S.bca_flags(-1.01, -0.12, 3e-5, 0.44, B)
    assert len(reasons) == 2  # z0 and the range (resolution is implied by the range message)
    assert "|z0| = 1.01" in reasons[0] and "3e-05–0.44" in reasons[1]


def test_bca_flags_fire_on_seven_models_with_large_bias():
    Y = Y7[:, None] + np.array([0.0, 1.0, -0.5])  # the mean over datasets has the same r
    agg = S.aggregate_correlation(X7, Y, n_resamples=2000, seed=0)
    bca = agg["pearson_bca"]
    assert bca["z0"] == pytest.approx(-1.0, abs=0.1)
    assert bca["alpha"][1] < 0.5  # the upper BCa end is below the replicates' median
    assert any("|z0|" in f for f in bca["flags"])
    assert any("quantiles" in f for f in bca["flags"])
    # BCa is narrower than the percentile interval and sits in its lower part
    lo, hi = agg["pearson_ci"]
    plo, phi = agg["pearson_ci_pct"]
    assert hi < phi and hi - lo < 2 * (phi - plo)
    assert agg["pearson"] == pytest.approx(st.pearsonr(X7, Y7).statistic)


def test_bca_flags_quiet_on_thirty_well_behaved_models():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    Y = 0.7 * x[:, None] + rng.normal(0, 0.7, (30, 4))
    for row in [S.aggregate_correlation(x, Y, n_resamples=2000, seed=0),
                *S.correlate_columns(x, Y, n_resamples=2000, seed=0)]:
        for key in ("pearson", "spearman"):
            b = row[f"{key}_bca"]
            assert b["flags"] == [], (key, b)
            assert abs(b["z0"]) < S.BCA_Z0_MAX


# --------------------------------------------------------------------------- convergence cases


SCRATCH = [(0, 10.0), (100, 40.0), (200, 60.0), (300, 60.0)]  # final 60%, first reached at 200


@pytest.mark.parametrize("finetune, reached, speedup, below", [
    ([(0, 10.0), (50, 60.0), (100, 70.0)], True, 4.0, None),  # reached at 50
    ([(0, 10.0), (100, 50.0), (300, 59.0)], False, None, 200 / 300),  # never: below 200/300
    ([(0, 65.0), (100, 70.0)], True, "inf", None),  # above the target before training
    ([(0, 10.0), (400, 60.0)], True, 0.5, None),  # slower than scratch but gets there
])
def test_convergence_speedup_cases(finetune, reached, speedup, below):
    res = S.convergence_speedup(finetune, SCRATCH)
    assert res["reached"] is reached
    assert res["steps_scratch"] == 200.0
    if speedup == "inf":
        assert res["speedup"] == "inf" and res["steps_finetune"] == 0.0
    else:
        assert res["speedup"] == (None if speedup is None else pytest.approx(speedup))
    assert res["speedup_below"] == (None if below is None else pytest.approx(below))
    if not reached:
        assert res["steps_finetune"] is None


def test_convergence_speedup_when_scratch_never_improves():
    flat = [(0, 30.0), (100, 20.0), (200, 25.0)]  # final 25% is already met at step 0
    assert S.convergence_speedup([(0, 40.0), (50, 50.0)], flat)["speedup"] == 1.0  # 0 / 0
    slow = S.convergence_speedup([(0, 10.0), (50, 30.0)], flat)
    assert slow["steps_scratch"] == 0.0 and slow["speedup"] == 0.0  # 0 / 37.5
    empty = S.convergence_speedup([], flat)
    assert empty["reached"] is None and empty["speedup"] is None


def _cells(*values):
    """Cells from speed-ups: a number or "inf" reached; ("<", b) never reached, bound b."""
    out = []
    for v in values:
        if isinstance(v, tuple):
            out.append({"reached": False, "speedup": None, "speedup_below": v[1]})
        else:
            out.append({"reached": True, "speedup": v, "speedup_below": None})
    return out


def test_median_speedup_all_reached():
    res = S.median_speedup(_cells(1.0, 4.0, 2.0, 8.0))
    assert res["median_speedup"] == pytest.approx(np.median([1, 2, 4, 8]))
    assert res["median_speedup_below"] is None
    assert (res["speedup_cells"], res["speedup_reached"], res["speedup_infinite"]) == (4, 4, 0)


def test_median_speedup_none_reached():
    res = S.median_speedup(_cells(("<", 0.5), ("<", 0.9), ("<", 0.7)))
    assert res["median_speedup"] is None
    assert res["median_speedup_below"] == pytest.approx(0.7)  # median of the bounds
    assert (res["speedup_cells"], res["speedup_reached"]) == (3, 0)


def test_median_speedup_half_reached_is_only_bounded():
    # 2 of 4 reached: the middle pair holds a never-reached cell, so the median is unknown;
    # dropping those two would have claimed median(3, 5) = 4x.
    res = S.median_speedup(_cells(3.0, 5.0, ("<", 0.8), ("<", 0.6)))
    assert res["median_speedup"] is None
    assert res["median_speedup_below"] == pytest.approx(np.median([0.6, 0.8, 3.0, 5.0]))
    assert res["speedup_reached"] == 2


def test_median_speedup_counts_never_reached_as_slowest():
    # the mini study's synth-shift shape: 4 of 7 reached; dropping the 3 others would give
    # median(1.2, 1.42, 1.6, 2.0) = 1.51, counting them gives the 4th smallest of 7 = 1.2
    res = S.median_speedup(_cells(1.42, 1.2, 2.0, 1.6, ("<", 0.9), ("<", 0.95), ("<", 0.99)))
    assert res["median_speedup"] == pytest.approx(1.2)
    assert (res["speedup_cells"], res["speedup_reached"]) == (7, 4)
    # a never-reached cell ranks below a reached one even when its bound is higher
    res = S.median_speedup(_cells(0.5, 0.6, ("<", 3.0)))
    assert res["median_speedup"] == pytest.approx(0.5)


def test_median_speedup_infinite_and_empty():
    res = S.median_speedup(_cells("inf", "inf", 2.0))
    assert res["median_speedup"] == "inf" and res["speedup_infinite"] == 2
    res = S.median_speedup(_cells("inf", 2.0))  # mean of 2 and inf
    assert res["median_speedup"] == "inf"
    res = S.median_speedup([{"reached": None}])  # no curves: not a cell
    assert res == {"median_speedup": None, "median_speedup_below": None, "speedup_cells": 0,
                   "speedup_reached": 0, "speedup_infinite": 0}
