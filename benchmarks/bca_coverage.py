"""Coverage of the bootstrap intervals of Pearson r over few models (suite.analysis.stats).

How often does a nominal-95% interval of a correlation over n models contain the true
correlation? For each n and true ρ, ``--datasets`` independent samples of n (x, y) pairs are
drawn from a bivariate normal with correlation ρ (the source and transfer log-odds of n models;
r is invariant to the affine scale of either, so any normal log-odds are covered), and each gets
the BCa and the percentile interval of :func:`suite.analysis.stats.bootstrap_bca` from
``--resamples`` model resamples — the code the analysis runs. It also counts how often
:func:`suite.analysis.stats.bca_flags` distrusts a BCa interval and the coverage of flagged and
unflagged ones. ``--dist t3`` draws a bivariate t with 3 degrees of freedom instead (same
correlation ρ, heavy tails: now and then one model far from the others).

    python benchmarks/bca_coverage.py            # about 20 s on one core
    python benchmarks/bca_coverage.py --dist t3 --json out.json

Prints one table row per (ρ, n); the latest numbers are in benchmarks/analysis.md. The Monte
Carlo standard error of a coverage near 0.9 is sqrt(0.9 · 0.1 / datasets): 0.005 at the default
4000.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from suite.analysis import stats

SIZES = (5, 7, 10, 12, 16, 20, 30)  # models per study
RHOS = (0.5, 0.9)  # true correlations


def coverage(n: int, rho: float, n_datasets: int, n_resamples: int, seed: int,
             dist: str = "normal") -> dict:
    """Coverage of both intervals for one (n, ρ): all datasets bootstrapped at once.

    The K = n_datasets samples are the K statistics of one :func:`stats.bootstrap_bca` call,
    so they share the model-index draws (each sample's own resamples are still a plain
    bootstrap of it, and the samples are independent of the draws).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_datasets, n))  # (K, n)
    y = rho * x + np.sqrt(1.0 - rho ** 2) * rng.normal(size=(n_datasets, n))
    if dist == "t3":
        # (x, y) / sqrt(χ²₃ / 3) per model: bivariate t, the same correlation ρ.
        w = np.sqrt(3.0 / rng.chisquare(3.0, size=(n_datasets, n)))
        x, y = x * w, y * w

    def stat(im):  # im (R, n) -> (R, K)
        return stats.pearson(x[:, im], y[:, im]).T  # (K, R, n) -> (K, R) -> (R, K)

    chunk = max(1, 1_000_000 // (n_datasets * n))  # (K, chunk, n) gathers of ~8 MB
    boot = stats.bootstrap_bca(stat, (n,), n_resamples=n_resamples, seed=seed + 1, chunk=chunk)
    bca = (boot["low"] <= rho) & (rho <= boot["high"])  # NaN interval: not covered
    pct = (boot["pct_low"] <= rho) & (rho <= boot["pct_high"])
    checks = stats.bca_checks(boot["z0"], boot["a"], boot["alpha_low"], boot["alpha_high"],
                              n_resamples)  # criterion -> (K,) bool
    flagged = np.logical_or.reduce(list(checks.values()))

    def cov_if(mask):
        return float(bca[mask].mean()) if mask.any() else None
    return {
        "dist": dist, "n": n, "rho": rho, "datasets": n_datasets, "resamples": n_resamples,
        "bca": float(bca.mean()), "percentile": float(pct.mean()),
        "bca_width": float(np.nanmedian(boot["high"] - boot["low"])),
        "pct_width": float(np.nanmedian(boot["pct_high"] - boot["pct_low"])),
        "flagged": float(flagged.mean()),
        "bca_flagged": cov_if(flagged), "bca_unflagged": cov_if(~flagged),
        "pct_flagged": float(pct[flagged].mean()) if flagged.any() else None,
        # per criterion: share of studies it flags, and the BCa coverage among them
        "criteria": {k: {"share": float(v.mean()), "bca": cov_if(v)} for k, v in checks.items()},
        "abs_z0_q95": float(np.nanquantile(np.abs(boot["z0"]), 0.95)),
        "abs_a_q95": float(np.nanquantile(np.abs(boot["a"]), 0.95)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=int, default=4000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dist", choices=("normal", "t3"), default="normal")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    print("  rho    n   BCa   pct   width BCa/pct   flagged  BCa|flag  BCa|ok  "
          "|z0| q95  |a| q95")
    for i, rho in enumerate(RHOS):
        for j, n in enumerate(SIZES):
            r = coverage(n, rho, args.datasets, args.resamples, args.seed + 100 * i + 2 * j,
                         args.dist)
            rows.append(r)

            def pc(v):
                return "   –  " if v is None else f"{v:6.3f}"

            print(f"{rho:5.2f} {n:4d} {r['bca']:5.3f} {r['percentile']:5.3f}   "
                  f"{r['bca_width']:5.3f}/{r['pct_width']:5.3f}    {r['flagged']:5.3f}  "
                  f"{pc(r['bca_flagged'])}  {pc(r['bca_unflagged'])}   "
                  f"{r['abs_z0_q95']:5.2f}   {r['abs_a_q95']:5.2f}", flush=True)
    print("\nper criterion: share of studies flagged / BCa coverage among them")
    for r in rows:
        print(f"{r['rho']:5.2f} {r['n']:4d}  " + "  ".join(
            f"{k} {c['share']:.3f}/{'–' if c['bca'] is None else format(c['bca'], '.2f')}"
            for k, c in r["criteria"].items()))
    print(f"{time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
