"""Statistics of the transfer study: log-odds, correlations, BCa bootstrap, permutation tests.

Everything here is plain, vectorised NumPy over a leading *resample* axis ``B`` and is seeded
(``numpy.random.default_rng(seed)``), so a result is reproducible bit for bit.

Conventions (shapes in comments):

* ``m`` models, ``D`` datasets, ``B`` resamples. A *transfer matrix* ``Y`` is ``(m, D)`` log-odds,
  ``NaN`` where a (model, dataset) cell is missing. ``x`` is ``(m,)`` source log-odds.
* Accuracies enter as percent and are turned into log-odds with :func:`logit`.
* Confidence intervals are bias-corrected and accelerated (BCa, Efron & Tibshirani 1993, §14.3,
  eq. 14.15 and 15.36) with the jackknife acceleration; :func:`bootstrap_bca` follows the same
  steps as ``scipy.stats.bootstrap(method="BCa")`` and, given the same seed, draws the same
  resamples, so the two agree to rounding. Beside each BCa interval the percentile interval
  (the plain α/2, 1 - α/2 quantiles of the same replicates) and the BCa terms z0, a, α₁, α₂
  are kept, with :func:`bca_flags` saying when those terms are too large for the BCa interval
  to be trusted (over few models it can be tight only because it sits in one tail of the
  bootstrap distribution).
* Permutation p-values are two-sided, defined as SciPy's ``permutation_test`` defines them:
  ``min(1, 2 * min(P(null <= obs), P(null >= obs)))`` with the ``+1`` correction of a
  randomised test.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import special, stats

# Accuracies are clipped to [LOGIT_EPS, 1 - LOGIT_EPS] before the log-odds, so that 0% and 100%
# map to finite values (±9.21). 1e-4 is below the resolution of any test set under 10,000
# images, so it only moves exact 0/100 results. When the test-set size n is known the
# (k + 0.5) / (n + 1) rule (a continuity correction; ±log(2n+1) at the ends) is used instead.
LOGIT_EPS = 1e-4


def logit(accuracy_percent, n: int | np.ndarray | None = None) -> np.ndarray:
    """Log-odds ``log(p / (1 - p))`` of accuracies given in percent.

    ``p = accuracy / 100`` is clipped to ``[LOGIT_EPS, 1 - LOGIT_EPS]``; when ``n`` (test-set
    size) is given, ``p = (k + 0.5) / (n + 1)`` with ``k = p n`` correct answers instead.
    NaN stays NaN.
    """
    p = np.asarray(accuracy_percent, dtype=np.float64) / 100.0
    if n is not None:
        n = np.asarray(n, dtype=np.float64)
        p = (p * n + 0.5) / (n + 1.0)
    else:
        p = np.clip(p, LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def expit_percent(z) -> np.ndarray:
    """Inverse of :func:`logit` (without the clipping), in percent."""
    return 100.0 * special.expit(np.asarray(z, dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# correlations, vectorised along the last axis


def pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson r of ``x`` and ``y`` along ``axis`` (broadcasting); NaN where a variance is 0.

    r = Σ (x - x̄)(y - ȳ) / sqrt(Σ (x - x̄)² Σ (y - ȳ)²)
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n = np.broadcast_shapes(x.shape, y.shape)[axis]
    mx = x.mean(axis=axis, keepdims=True)
    my = y.mean(axis=axis, keepdims=True)
    xc = x - mx
    yc = y - my
    sxx = np.squeeze((xc * xc).sum(axis=axis, keepdims=True), axis)
    syy = np.squeeze((yc * yc).sum(axis=axis, keepdims=True), axis)
    sxy = (xc * yc).sum(axis=axis)
    # A constant sample has Σ(x - x̄)² of the order of n (ε x̄)² from rounding, not exactly 0:
    # call a variance zero below 1e-20 n x̄² (and below 1e-300 when x̄ = 0).
    tiny_x = 1e-20 * n * np.squeeze(mx, axis) ** 2 + 1e-300
    tiny_y = 1e-20 * n * np.squeeze(my, axis) ** 2 + 1e-300
    ok = (sxx > tiny_x) & (syy > tiny_y)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(np.where(ok, sxx * syy, 1.0))
    return np.clip(np.where(ok, r, np.nan), -1.0, 1.0)


def rank(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Ranks along ``axis`` with ties averaged (what Spearman's ρ needs after resampling)."""
    return stats.rankdata(a, axis=axis)


def spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman ρ = Pearson r of the (tie-averaged) ranks."""
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    return pearson(rank(x, axis), rank(y, axis), axis)


def resample_ranks(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Tie-averaged ranks of every resample ``values[:, idx]`` without sorting each resample.

    values (K, m), idx (R, m') integer draws -> (K, R, m'), equal to
    ``rank(values[:, idx], axis=-1)``. A resample holds only the original values, so with
    c_g = how often resample r drew a value of (distinct-value) group g, a draw of group g has
    rank  Σ_{h<g} c_h + (c_g + 1) / 2.  The group counts are one product (R, m) @ (m, K m).
    """
    values = np.asarray(values, np.float64)
    K, m = values.shape
    R, _ = idx.shape
    counts = np.bincount((idx + m * np.arange(R)[:, None]).ravel(),
                         minlength=R * m).reshape(R, m).astype(np.float64)  # (R, m)
    order = np.argsort(values, axis=1, kind="stable")
    sv = np.take_along_axis(values, order, axis=1)
    starts = np.concatenate([np.ones((K, 1), bool), sv[:, 1:] != sv[:, :-1]], axis=1)
    group = np.empty((K, m), np.int64)
    np.put_along_axis(group, order, np.cumsum(starts, axis=1) - 1, axis=1)  # (K, m)
    onehot = np.zeros((K, m, m))
    np.put_along_axis(onehot, group[:, :, None], 1.0, axis=2)  # (K, m, G<=m)
    # One 2-D product (a batched matmul over K is many times slower here).
    per_group = (counts @ onehot.transpose(1, 0, 2).reshape(m, K * m)).reshape(
        R, K, m).transpose(1, 0, 2)  # (K, R, G)
    rank_of_group = np.cumsum(per_group, axis=-1) - per_group + (per_group + 1.0) / 2.0
    return np.take_along_axis(rank_of_group, group[:, idx], axis=-1)  # (K, R, m')


CORRELATIONS: dict[str, Callable[..., np.ndarray]] = {"pearson": pearson, "spearman": spearman}


# ---------------------------------------------------------------------------------------------
# bootstrap (BCa) and permutation tests


def _quantile_rows(values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row linear-interpolation quantile (NumPy's default method), ignoring NaN.

    values (K, B), q (K,) in [0, 1] -> (K,). Rows with no finite value or a NaN q give NaN.
    """
    v = np.sort(values, axis=-1)  # NaN sort last
    n_ok = np.isfinite(v).sum(axis=-1)
    pos = q * (n_ok - 1)
    ok = np.isfinite(pos) & (n_ok > 0)
    pos = np.where(ok, pos, 0.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n_ok - 1, 0))
    vlo = np.take_along_axis(v, lo[:, None], axis=-1)[:, 0]
    vhi = np.take_along_axis(v, hi[:, None], axis=-1)[:, 0]
    out = vlo + (pos - lo) * (vhi - vlo)
    return np.where(ok, np.where(hi == lo, vlo, out), np.nan)


def bca_terms(theta_hat: np.ndarray, theta_b: np.ndarray, theta_jack: Sequence[np.ndarray],
              confidence: float = 0.95) -> dict[str, np.ndarray]:
    """The BCa correction of ``K`` statistics: bias z0, acceleration a and adjusted levels.

    theta_hat (K,) estimate on the data; theta_b (B, K) bootstrap replicates; theta_jack: one
    (n_j, K) array of leave-one-out estimates per resampled axis (models, and datasets when
    both are resampled). Returns {"z0", "a", "alpha_low", "alpha_high"}, each (K,).

    z0 = Φ⁻¹(#{θ*_b < θ̂} / B, ties counted half)             bias correction
    U_i = (n - 1)(θ̄_(·) - θ_(i)),  a = Σ_j Σ U³/n³ / (6 (Σ_j Σ U²/n²)^{3/2})   acceleration
    α₁,₂ = Φ(z0 + (z0 + z_α) / (1 - a (z0 + z_α)))  for z_α = Φ⁻¹(α/2), Φ⁻¹(1 - α/2)
    Non-finite replicates (a degenerate resample, e.g. all one model) are left out of z0.
    """
    theta_hat = np.asarray(theta_hat, np.float64)
    tb = np.asarray(theta_b, np.float64).T  # (K, B)
    finite = np.isfinite(tb)
    n_ok = finite.sum(axis=-1)
    th = theta_hat[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        below = ((tb < th) & finite).sum(-1) + ((tb <= th) & finite).sum(-1)
        z0 = special.ndtri(below / (2.0 * n_ok))
        num = np.zeros_like(theta_hat)
        den = np.zeros_like(theta_hat)
        for jack in theta_jack:
            jack = np.asarray(jack, np.float64)
            n = float(jack.shape[0])
            u = (n - 1.0) * (jack.mean(axis=0) - jack)  # (n, K)
            num += (u ** 3).sum(axis=0) / n ** 3
            den += (u ** 2).sum(axis=0) / n ** 2
        a = num / (6.0 * den ** 1.5)
        a = np.where(den > 0, a, 0.0)
        alpha = (1.0 - confidence) / 2.0
        z_lo, z_hi = special.ndtri(alpha), -special.ndtri(alpha)
        n1, n2 = z0 + z_lo, z0 + z_hi
        a1 = special.ndtr(z0 + n1 / (1.0 - a * n1))
        a2 = special.ndtr(z0 + n2 / (1.0 - a * n2))
    return {"z0": z0, "a": a, "alpha_low": a1, "alpha_high": a2}


def bca_interval(theta_hat: np.ndarray, theta_b: np.ndarray,
                 theta_jack: Sequence[np.ndarray], confidence: float = 0.95
                 ) -> tuple[np.ndarray, np.ndarray]:
    """BCa interval of ``K`` statistics at once: the quantiles α₁, α₂ (:func:`bca_terms`) of
    the finite replicates. Shapes as in :func:`bca_terms`; returns (low (K,), high (K,))."""
    t = bca_terms(theta_hat, theta_b, theta_jack, confidence)
    return _interval_at(theta_hat, theta_b, t["alpha_low"], t["alpha_high"])


def _interval_at(theta_hat: np.ndarray, theta_b: np.ndarray, q_low: np.ndarray,
                 q_high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles q_low, q_high (K,) of the finite replicates theta_b (B, K); NaN where the
    estimate (K,) is NaN or no replicate is finite."""
    theta_hat = np.asarray(theta_hat, np.float64)
    tb = np.asarray(theta_b, np.float64).T  # (K, B)
    ok = np.isfinite(theta_hat) & (np.isfinite(tb).sum(axis=-1) > 0)
    low = np.where(ok, _quantile_rows(tb, np.broadcast_to(q_low, ok.shape)), np.nan)
    high = np.where(ok, _quantile_rows(tb, np.broadcast_to(q_high, ok.shape)), np.nan)
    return low, high


def percentile_interval(theta_hat: np.ndarray, theta_b: np.ndarray, confidence: float = 0.95
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval: the α/2 and 1 - α/2 quantiles of the finite replicates (what
    ``scipy.stats.bootstrap(method="percentile")`` returns). theta_hat (K,) (NaN there gives a
    NaN interval), theta_b (B, K) -> (low (K,), high (K,))."""
    alpha = (1.0 - confidence) / 2.0
    return _interval_at(theta_hat, theta_b, alpha, 1.0 - alpha)


# When to distrust a BCa interval (bca_flags). BCa is second-order accurate because z0 and a
# are small O(n^-1/2) corrections (Efron & Tibshirani 1993, §14.3, §22.4); over few models they
# are neither small nor well estimated. benchmarks/bca_coverage.py measured them on Pearson r
# of bivariate normal and bivariate t3 data, 4000 studies per (n, ρ) (benchmarks/analysis.md
# has the tables); "covered" is how often a flagged nominal-95% interval held the true r,
# against 87-96% for the unflagged ones:
# * |z0| > 0.5 (the estimate has 69% of its own replicates on one side): 0-2% of studies at
#   n = 30, 1-8% at n = 7; covered 60-95% (only a few dozen studies per cell past n = 10).
# * |a| can never exceed 1/6 (Σ|U|³ <= (ΣU²)^{3/2}); |a| > 0.14 means one model's leave-one-out
#   value carries nearly all of the jackknife's skewness (resampling n models, |a| is at most
#   (n - 2) / (6 sqrt(n (n - 1))), reached when one value stands apart: 0.13 at n = 7, 0.1405
#   at n = 10, so this fires from n = 10 on). Hardly ever for normal data; 1-8% of t3 studies,
#   covered 77-92%.
# * α₁ > 0.25 or α₂ < 0.75: a nominal-95% interval that starts above the lower quartile (ends
#   below the upper quartile) of the bootstrap distribution leaves out most of one half of it;
#   covered 33-91%.
# * α₁ < 1/B or α₂ > 1 - 1/B: an end is the single most extreme of B replicates, where B
#   resamples cannot resolve the quantile; covered 69-96%.
BCA_Z0_MAX = 0.5
BCA_A_MAX = 0.14
BCA_ALPHA_LOW_MAX = 0.25
BCA_ALPHA_HIGH_MIN = 0.75


def bca_checks(z0, a, alpha_low, alpha_high, n_resamples: int) -> dict[str, np.ndarray]:
    """Which of the thresholds above each BCa interval crosses; arrays of any one shape in,
    boolean arrays of that shape out: {"z0", "a", "range" (α₁, α₂ too far in), "resolution"
    (an end on the most extreme replicate)}. A NaN z0 or a (degenerate statistic) flags
    nothing; an infinite z0 (every replicate on one side) is flagged."""
    z0, a = np.asarray(z0, np.float64), np.asarray(a, np.float64)
    lo, hi = np.asarray(alpha_low, np.float64), np.asarray(alpha_high, np.float64)
    return {"z0": np.abs(z0) > BCA_Z0_MAX, "a": np.abs(a) > BCA_A_MAX,
            "range": (lo > BCA_ALPHA_LOW_MAX) | (hi < BCA_ALPHA_HIGH_MIN),
            "resolution": (lo * n_resamples < 1) | ((1.0 - hi) * n_resamples < 1)}


def bca_flags(z0: float, a: float, alpha_low: float, alpha_high: float, n_resamples: int,
              confidence: float = 0.95) -> list[str]:
    """Why one BCa interval should not be trusted (:func:`bca_checks`), as short phrases naming
    the values; empty when it crosses no threshold."""
    c = {k: bool(v) for k, v in bca_checks(z0, a, alpha_low, alpha_high, n_resamples).items()}
    half = (1.0 - confidence) / 2.0
    out = []
    if c["z0"]:
        out.append(f"bias correction |z0| = {abs(z0):.2f} > {BCA_Z0_MAX}")
    if c["a"]:
        out.append(f"acceleration |a| = {abs(a):.3f} > {BCA_A_MAX}")
    if c["range"]:
        out.append(f"it spans quantiles {alpha_low:.2g}–{alpha_high:.2g} of the bootstrap "
                   f"distribution, not {half:.3g}–{1 - half:.3g}")
    elif c["resolution"]:
        out.append(f"an end lies at quantile {alpha_low:.2g} or {alpha_high:.6g}, on the most "
                   f"extreme of {n_resamples} replicates")
    return out


def resample_indices(rng: np.random.Generator, n: int, n_resamples: int) -> np.ndarray:
    """(B, n) bootstrap indices, drawn as ``scipy.stats.bootstrap`` draws them."""
    return rng.integers(0, n, (n_resamples, n))


def _leave_one_out(n: int) -> np.ndarray:
    """(n, n - 1): row i is arange(n) without i."""
    idx = np.broadcast_to(np.arange(n), (n, n))
    return idx[~np.eye(n, dtype=bool)].reshape(n, n - 1)


def bootstrap_bca(statistic: Callable[..., np.ndarray], sizes: Sequence[int], *,
                  n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                  chunk: int = 2500) -> dict[str, np.ndarray]:
    """Bootstrap ``K`` statistics resampling one or more independent axes, with BCa intervals.

    ``statistic(*idx)`` takes one integer index array per axis, each (R, n_j) (R rows of
    resampled — or leave-one-out — indices into that axis) and returns (R, K) values.
    ``sizes`` = (n_models,) or (n_models, n_datasets) for two-way resampling.
    Returns {"estimate", "low", "high" (the BCa interval), "pct_low", "pct_high" (the
    percentile interval), "se", "z0", "a", "alpha_low", "alpha_high" (:func:`bca_terms`), each
    (K,), and "replicates" (B, K)}.
    """
    rng = np.random.default_rng(seed)
    full = [np.arange(n)[None, :] for n in sizes]
    theta_hat = np.asarray(statistic(*full), np.float64)[0]  # (K,)
    draws = [resample_indices(rng, n, n_resamples) for n in sizes]
    parts = []
    for s in range(0, n_resamples, chunk):  # bounded memory for large B
        parts.append(np.asarray(statistic(*(d[s:s + chunk] for d in draws)), np.float64))
    theta_b = np.concatenate(parts, axis=0)  # (B, K)
    jack = []
    for j, n in enumerate(sizes):
        if n < 2:
            continue
        loo = _leave_one_out(n)  # (n, n-1)
        idx = [np.broadcast_to(f, (n, f.shape[1])) for f in full]
        idx[j] = loo
        jack.append(np.asarray(statistic(*idx), np.float64))
    terms = bca_terms(theta_hat, theta_b, jack, confidence)
    low, high = _interval_at(theta_hat, theta_b, terms["alpha_low"], terms["alpha_high"])
    pct_low, pct_high = percentile_interval(theta_hat, theta_b, confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        se = np.nanstd(theta_b, axis=0, ddof=1)
    return {"estimate": theta_hat, "low": low, "high": high, "pct_low": pct_low,
            "pct_high": pct_high, "se": se, **terms, "replicates": theta_b}


def permutation_pvalues(x: np.ndarray, Y: np.ndarray, method: str = "pearson", *,
                        n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Two-sided permutation p-value of corr(x, Y[:, k]) for every column k at once.

    x (n,), Y (n, K) complete (no NaN). The null permutes the pairing of x with Y (SciPy's
    ``permutation_type="pairings"``): shuffled x (B, n) against each column. For Spearman the
    ranks are permuted (ranking commutes with permutation). When n! <= n_resamples every
    permutation is enumerated (exact test), as SciPy does.
    """
    x = np.asarray(x, np.float64)
    Y = np.asarray(Y, np.float64)
    n = x.shape[0]
    if method == "spearman":
        x, Y = rank(x), rank(Y, axis=0)
    obs = pearson(x[:, None], Y, axis=0)  # (K,)
    if math.factorial(n) <= n_resamples:
        import itertools

        perms = np.array(list(itertools.permutations(range(n))))
        adjustment, count = 0, len(perms)
    else:
        rng = np.random.default_rng(seed)
        perms = rng.permuted(np.broadcast_to(np.arange(n), (n_resamples, n)), axis=1)
        adjustment, count = 1, n_resamples
    # Permuting x leaves both norms unchanged, so every null r is one product:
    # r_b = xc[perm_b] · yc / (|xc| |yc|)  ->  (B, n) @ (n, K).
    xc = x - x.mean()
    yc = Y - Y.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        yn = yc / np.linalg.norm(yc, axis=0)
        null = np.clip((xc[perms] / np.linalg.norm(xc)) @ yn, -1.0, 1.0)  # (B, K)
    gamma = np.abs(1e-14 * obs)  # SciPy's tolerance for ties with the observed value
    less = ((null <= obs + gamma).sum(0) + adjustment) / (count + adjustment)
    greater = ((null >= obs - gamma).sum(0) + adjustment) / (count + adjustment)
    p = np.minimum(2.0 * np.minimum(less, greater), 1.0)
    return np.where(np.isfinite(obs), p, np.nan)


# ---------------------------------------------------------------------------------------------
# correlation tables


def _gather(Y: np.ndarray, im: np.ndarray, idd: np.ndarray | None) -> np.ndarray:
    """Y (m, D) indexed by models im (R, m') and datasets idd (R, D') -> (R, m', D')."""
    if idd is None:
        return Y[im]
    return Y[im[:, :, None], idd[:, None, :]]


def correlate_columns(x: np.ndarray, Y: np.ndarray, *, n_resamples: int = 2000,
                      confidence: float = 0.95, seed: int = 0,
                      n_permutations: int | None = None) -> list[dict]:
    """Pearson r and Spearman ρ of x against every column of Y, with BCa CIs resampling models
    (all columns share the same resamples) and permutation p-values.

    x (m,), Y (m, K) without NaN. Returns one dict per column with pearson, pearson_ci (BCa),
    pearson_ci_pct (percentile), pearson_bca (z0, a, α₁, α₂ and flags; see
    :func:`_interval_fields`), the same four for spearman, p_value (Pearson permutation),
    spearman_p_value, n_models, pearson_se.
    """
    x = np.asarray(x, np.float64)
    Y = np.asarray(Y, np.float64)
    m, K = Y.shape

    Yt = np.ascontiguousarray(Y.T)  # (K, m): reductions run along the contiguous last axis

    def stat(im):  # im (R, m) -> (R, 2K)
        xb = x[im][None]  # (1, R, m)
        yb = Yt[:, im]  # (K, R, m)
        r = pearson(xb, yb)  # (K, R)
        rho = pearson(resample_ranks(x[None], im), resample_ranks(Yt, im))
        return np.concatenate([r, rho], axis=0).T

    boot = bootstrap_bca(stat, (m,), n_resamples=n_resamples, confidence=confidence, seed=seed)
    n_perm = n_permutations or n_resamples
    p_r = permutation_pvalues(x, Y, "pearson", n_resamples=n_perm, seed=seed + 1)
    p_rho = permutation_pvalues(x, Y, "spearman", n_resamples=n_perm, seed=seed + 1)
    out = []
    for k in range(K):
        out.append({
            **_interval_fields(boot, k, "pearson", n_resamples, confidence),
            **_interval_fields(boot, K + k, "spearman", n_resamples, confidence),
            "p_value": _f(p_r[k]),
            "spearman_p_value": _f(p_rho[k]),
            "pearson_se": _f(boot["se"][k]),
            "n_models": int(m),
        })
    return out


def _f(v) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    v = float(v)
    return v if math.isfinite(v) else None


def _interval_fields(boot: dict[str, np.ndarray], k: int, name: str, n_resamples: int,
                     confidence: float) -> dict[str, Any]:
    """Statistic k of a :func:`bootstrap_bca` result as JSON fields: ``<name>`` (estimate),
    ``<name>_ci`` (BCa), ``<name>_ci_pct`` (percentile) and ``<name>_bca`` = {"z0", "a",
    "alpha": [α₁, α₂], "flags": the :func:`bca_flags` reasons to distrust the BCa interval}.
    A statistic that is undefined on the data (NaN) gets no flags."""
    z0, a = float(boot["z0"][k]), float(boot["a"][k])
    lo, hi = float(boot["alpha_low"][k]), float(boot["alpha_high"][k])
    defined = math.isfinite(float(boot["estimate"][k])) and not math.isnan(z0)
    return {
        name: _f(boot["estimate"][k]),
        f"{name}_ci": [_f(boot["low"][k]), _f(boot["high"][k])],
        f"{name}_ci_pct": [_f(boot["pct_low"][k]), _f(boot["pct_high"][k])],
        f"{name}_bca": {"z0": _f(z0), "a": _f(a), "alpha": [_f(lo), _f(hi)],
                        "flags": bca_flags(z0, a, lo, hi, n_resamples, confidence)
                        if defined else []},
    }


def adjusted_scores(Y: np.ndarray) -> np.ndarray:
    """Per-model mean over datasets of log-odds with each dataset's mean (over the models that
    have it) removed: a_i = mean_d (Y_id - mean_j Y_jd). Y (..., m, D) with NaN -> (..., m).

    With no missing cells this is the plain mean minus a constant (same correlations); with
    missing cells it stops an easy or hard dataset from moving only the models that have it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        centred = Y - np.nanmean(Y, axis=-2, keepdims=True)
        return np.nanmean(centred, axis=-1)


def aggregate_correlation(x: np.ndarray, Y: np.ndarray, *, adjusted: bool = False,
                          two_way: bool = False, n_resamples: int = 2000,
                          confidence: float = 0.95, seed: int = 0,
                          n_permutations: int | None = None) -> dict:
    """Correlation of source log-odds with each model's summary over datasets.

    ``adjusted=False``: the paper's summary, the mean log-odds over datasets (Y must be
    complete). ``adjusted=True``: :func:`adjusted_scores` (NaN cells allowed; a model needs at
    least one dataset). ``two_way``: resample datasets as well as models (the CI then also
    covers "which datasets were chosen"); the jackknife acceleration sums over both axes.
    x (m,), Y (m, D). Fields as in :func:`correlate_columns`, plus n_datasets, two_way and the
    per-model scores.
    """
    x = np.asarray(x, np.float64)
    Y = np.asarray(Y, np.float64)
    m, D = Y.shape
    summary = adjusted_scores if adjusted else (lambda a: a.mean(axis=-1))

    def stat(im, idd=None):
        s = summary(_gather(Y, im, idd))  # (R, m)
        xb = x[im]
        r = pearson(xb, s, axis=1)
        rho = pearson(rank(xb, axis=1), rank(s, axis=1), axis=1)
        return np.stack([r, rho], axis=1)

    sizes = (m, D) if two_way else (m,)
    boot = bootstrap_bca(stat, sizes, n_resamples=n_resamples, confidence=confidence, seed=seed)
    s = summary(Y)
    n_perm = n_permutations or n_resamples
    p_r = permutation_pvalues(x, s[:, None], "pearson", n_resamples=n_perm, seed=seed + 1)[0]
    p_rho = permutation_pvalues(x, s[:, None], "spearman", n_resamples=n_perm, seed=seed + 1)[0]
    return {
        **_interval_fields(boot, 0, "pearson", n_resamples, confidence),
        **_interval_fields(boot, 1, "spearman", n_resamples, confidence),
        "p_value": _f(p_r),
        "spearman_p_value": _f(p_rho),
        "n_models": int(m),
        "n_datasets": int(D),
        "two_way": bool(two_way),
        "scores": [_f(v) for v in s],
    }


def mean_ci_over_datasets(Y: np.ndarray, *, n_resamples: int = 2000,
                          confidence: float = 0.95, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-row mean over datasets with a BCa CI resampling datasets. Y (K, D) complete.

    Used for per-model mean log-odds (figure 1 error bars) and for training-choice effects.
    """
    Y = np.asarray(Y, np.float64)
    K, D = Y.shape

    def stat(idd):  # (R, D') -> (R, K)
        return Y[:, idd].mean(axis=-1).T

    if D < 2:
        est = Y.mean(axis=-1)
        nan = np.full(K, np.nan)
        return {"estimate": est, "low": nan, "high": nan, "se": nan}
    boot = bootstrap_bca(stat, (D,), n_resamples=n_resamples, confidence=confidence, seed=seed)
    boot.pop("replicates")
    return boot


# ---------------------------------------------------------------------------------------------
# which models are worse than the best


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (family-wise error control).

    Sort p ascending; adj_(i) = max_{j<=i} min(1, (k - j) p_(j)) for k tests, i = 0..k-1.
    """
    p = np.asarray(pvalues, np.float64)
    k = p.size
    if k == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (k - np.arange(k)) * p[order])
    adj = np.maximum.accumulate(scaled)
    out = np.empty_like(adj)
    out[order] = adj
    return out


def worse_than_best(models: Sequence[str], Y: np.ndarray, *, test: str = "ttest",
                    alpha: float = 0.05) -> dict:
    """Models significantly worse than the best one across datasets (one setting).

    The best model has the highest mean log-odds over datasets. For every other model the
    paired differences best - model over datasets (D,) are tested (paired t-test, or
    ``test="wilcoxon"`` signed-rank), two-sided, and the p-values Holm-corrected over the
    m - 1 comparisons. Y (m, D) complete.
    """
    Y = np.asarray(Y, np.float64)
    m, D = Y.shape
    means = Y.mean(axis=1)
    best = int(np.argmax(means))
    others = [i for i in range(m) if i != best]
    if not others or D < 2:
        return {"best": models[best] if m else None, "test": test, "comparisons": []}
    diff = Y[best][None, :] - Y[others]  # (m-1, D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "wilcoxon":
            p = np.array([stats.wilcoxon(d).pvalue if np.any(d != 0) else 1.0 for d in diff])
        else:
            p = stats.ttest_rel(np.broadcast_to(Y[best], diff.shape), Y[others], axis=1).pvalue
    p = np.where(np.isfinite(p), p, 1.0)
    p_adj = holm(p)
    comps = []
    for j, i in enumerate(others):
        comps.append({
            "model": models[i], "mean_logit_diff": _f(diff[j].mean()), "p_value": _f(p[j]),
            "p_holm": _f(p_adj[j]), "worse": bool(p_adj[j] < alpha and diff[j].mean() > 0),
        })
    return {"best": models[best], "test": test, "alpha": alpha, "comparisons": comps}


# ---------------------------------------------------------------------------------------------
# fine-tuning vs training from scratch


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float) -> float:
    """First optimisation step at which a learning curve reaches ``target``, interpolating
    linearly between evaluations; NaN if it never does. curve: (step, accuracy) sorted."""
    if not curve:
        return float("nan")
    steps = np.array([s for s, _ in curve], np.float64)
    acc = np.array([a for _, a in curve], np.float64)
    hit = np.nonzero(acc >= target)[0]
    if hit.size == 0:
        return float("nan")
    i = int(hit[0])
    if i == 0:
        return float(steps[0])
    s0, s1, a0, a1 = steps[i - 1], steps[i], acc[i - 1], acc[i]
    return float(s0 + (s1 - s0) * (target - a0) / (a1 - a0)) if a1 > a0 else float(s1)


def convergence_speedup(finetune_curve: Sequence[tuple[int, float]],
                        scratch_curve: Sequence[tuple[int, float]]) -> dict:
    """How many times fewer steps fine-tuning needs to reach scratch training's final accuracy.

    The paper's measure: the number of steps each run needs to reach one threshold, the final
    test accuracy of the scratch run. target = the last point of the scratch curve; s_scratch,
    s_finetune = the first (linearly interpolated) steps at which each curve is at or above it
    (:func:`steps_to_reach`); speed-up = s_scratch / s_finetune. Every case is defined:

    * scratch always reaches its own final accuracy (at its last evaluation at the latest), so
      s_scratch is finite; it is 0 when the first evaluation is already at the final accuracy
      (scratch training never improved on it);
    * fine-tuning reaches the target: ``reached`` is True and ``speedup`` = s_scratch /
      s_finetune, which is "inf" when fine-tuning is there at its first evaluation (step 0,
      before any training) and scratch is not, 0.0 when scratch is and fine-tuning is not, and
      1.0 when both are (neither needs a step);
    * fine-tuning never reaches it within its curve: ``reached`` is False, ``speedup`` is None
      and ``speedup_below`` = s_scratch / T (T = the last fine-tune step) bounds it: it would
      need more than T steps, so its speed-up is below that (below 1 whenever fine-tuning ran at
      least as many steps as scratch needed). Summaries rank such a cell below every reached
      one (:func:`median_speedup`).

    Returns {"target", "steps_scratch", "steps_finetune" (None if not reached), "speedup"
    (float, "inf" or None), "reached" (bool or None), "speedup_below" (float, "inf" or None)};
    all None when a curve is empty.
    """
    if not finetune_curve or not scratch_curve:
        return {"target": None, "steps_scratch": None, "steps_finetune": None,
                "speedup": None, "reached": None, "speedup_below": None}
    target = float(scratch_curve[-1][1])
    s_s = steps_to_reach(scratch_curve, target)
    s_f = steps_to_reach(finetune_curve, target)
    out = {"target": target, "steps_scratch": _f(s_s), "steps_finetune": _f(s_f),
           "speedup": None, "reached": not math.isnan(s_f), "speedup_below": None}
    if math.isnan(s_f):
        last = float(finetune_curve[-1][0])
        out["speedup_below"] = _ratio(s_s, last)
    else:
        out["speedup"] = _ratio(s_s, s_f)
    return out


def _ratio(num: float, den: float) -> float | str:
    """num / den of step counts >= 0: "inf" for num > 0 = den, 1.0 for 0 / 0 (equal counts)."""
    if den > 0:
        return num / den
    return "inf" if num > 0 else 1.0


def median_speedup(cells: Sequence[dict]) -> dict:
    """Median convergence speed-up over cells (:func:`convergence_speedup` results; cells
    without both curves, ``reached`` None, are not counted), with never-reached cells in.

    A cell whose fine-tuning never reached scratch's final accuracy ranks below every cell that
    did (its speed-up is below its ``speedup_below`` bound, usually below 1; dropping it would
    bias the median upward), "inf" above every finite value. (Where a bound is above some
    reached value, as when fine-tuning got fewer steps than scratch needed, that ranking is a
    convention: the cell is taken as slower than every cell that got there.) The median of n
    values is the
    middle one (odd n) or the mean of the two middle ones (even n), so:

    * more than half reached: the median is a number (float, or "inf" when the middle values
      are infinite) and ``median_speedup_below`` is None;
    * half or fewer reached: a middle value is a never-reached cell, the median is not known;
      ``median_speedup`` is None and ``median_speedup_below`` bounds it: the median of the
      values with each never-reached cell at its bound (every true value is below its stand-in,
      so their median is too);
    * no cells: both None.

    Returns {"median_speedup", "median_speedup_below", "speedup_cells" (n), "speedup_reached",
    "speedup_infinite" (reached at fine-tuning's first evaluation)}.
    """
    cs = [c for c in cells if c.get("reached") is not None]
    n = len(cs)
    hit = [_as_float(c["speedup"]) for c in cs if c["reached"]]
    out = {"median_speedup": None, "median_speedup_below": None, "speedup_cells": n,
           "speedup_reached": len(hit), "speedup_infinite": sum(math.isinf(v) for v in hit)}
    if n == 0:
        return out
    if 2 * len(hit) > n:
        # never-reached cells at -inf: the middle order statistics are reached values
        vals = sorted([-math.inf] * (n - len(hit)) + hit)
        out["median_speedup"] = _inf_or_f(_middle(vals))
    else:
        stand_in = sorted(hit + [_as_float(c["speedup_below"]) for c in cs if not c["reached"]])
        out["median_speedup_below"] = _inf_or_f(_middle(stand_in))
    return out


def _as_float(v) -> float:
    return math.inf if v == "inf" else float(v)


def _middle(vals: list[float]) -> float:
    """Median of sorted values (mean of the two middle ones for even length; inf stays inf)."""
    n = len(vals)
    lo, hi = vals[(n - 1) // 2], vals[n // 2]
    return lo if lo == hi else (lo + hi) / 2.0


def _inf_or_f(v: float) -> float | str:
    return "inf" if v == math.inf else float(v)


# ---------------------------------------------------------------------------------------------
# benchmark


def bench_bootstrap(n_models: int = 16, n_datasets: int = 12, n_settings: int = 3,
                    n_resamples: int = 10_000, seed: int = 0) -> dict:
    """Time the full correlation statistics on a random study of the paper's size.

    Per setting: per-dataset Pearson + Spearman with BCa CIs and permutation p-values
    (``n_resamples`` each), the aggregate (mean log-odds) and the dataset-adjusted aggregate.
    Returns {"seconds" (wall), "cpu_seconds" (this process, all threads), "n_models",
    "n_datasets", "n_settings", "n_resamples"}.
    """
    rng = np.random.default_rng(seed)
    src = rng.uniform(60, 85, n_models)
    x = logit(src)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(n_settings):
        Y = 0.8 * x[:, None] + rng.normal(0, 0.3, (n_models, n_datasets)) + rng.normal(
            0, 1, n_datasets)
        correlate_columns(x, Y, n_resamples=n_resamples, seed=seed + s)
        aggregate_correlation(x, Y, n_resamples=n_resamples, seed=seed + s)
        aggregate_correlation(x, Y, adjusted=True, n_resamples=n_resamples, seed=seed + s)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "n_models": n_models, "n_datasets": n_datasets, "n_settings": n_settings,
            "n_resamples": n_resamples}
