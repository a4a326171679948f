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
            ref = st.bootstrap((x, Y[:, k]), lambda a, b, axis=-1: fn(a, b, axis=axis),
                               paired=True, vectorized=True, method="BCa", n_resamples=999,
                               rng=np.random.default_rng(seed))
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
