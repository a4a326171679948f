"""Which predictor ranks the models best: source top-1 or a transferability estimator?

For each setting and dataset, every predictor column of the table (``source_top1`` and each
estimator: the probe runs' ``estimator.<name>`` metrics, or extra numeric columns of a CSV) is
compared with the transfer accuracy over the models that have both:

* weighted Kendall tau ``tau_w`` (``scipy.stats.weightedtau`` with its defaults: hyperbolic
  weigher ``1/(r + 1)``, additive, the average of the two lexicographic rankings — as the
  estimator literature reports it; computed here vectorised over bootstrap resamples by
  :func:`weighted_tau`, which equals SciPy's to rounding), Kendall tau-b, Spearman rho and
  Pearson r (transfer log-odds against the predictor's score; ``source_top1`` in log-odds, as
  the main analysis has it);
* a percentile bootstrap interval of ``tau_w`` resampling models (``tau_w_ci``);
* across datasets, the mean ``tau_w`` per predictor with its interval, and a paired bootstrap
  test of each estimator against ``source_top1``: the same model resamples score both, the
  statistic is the difference of their mean ``tau_w``, the p-value two-sided
  (``min(1, 2 min(P(diff <= 0), P(diff >= 0)))`` over the resamples, +1 corrected).

Models are resampled within each dataset, datasets are held fixed. Estimator values belong to
(model, dataset) and apply to all three settings. Fewer than 3 models: reported with a warning;
a constant predictor: NaN tau (None in the JSON) with a warning.

JSON: ``settings[S]["predictors"]`` = ``{"per_dataset": {D: {P: {tau_w, kendall, spearman,
pearson, tau_w_ci, n_models}}}, "mean_tau_w": {P: value}, "mean_tau_w_ci": {P: [lo, hi]},
"vs_source_top1": {P: {"diff", "ci", "p_value"}}, "ranking": [P, ...]}``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from suite.analysis import stats
from suite.analysis import table as T

SOURCE = "source_top1"
MIN_MODELS = 3


def weighted_tau(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``scipy.stats.weightedtau(x, y)`` (defaults) of every row: x, y (B, m) -> (B,).

    With ranks rho from the decreasing lexicographic order by (x, y) and weights
    ``w_ij = 1/(rho_i + 1) + 1/(rho_j + 1)``::

        tau(rho) = sum_ij w_ij sgn(x_i - x_j) sgn(y_i - y_j)
                   / sqrt( sum_ij w_ij |sgn(x_i - x_j)| * sum_ij w_ij |sgn(y_i - y_j)| )

    averaged with the same from the order by (y, x). NaN when either is constant.
    """
    x = np.atleast_2d(np.asarray(x, np.float64))
    y = np.atleast_2d(np.asarray(y, np.float64))
    sx = np.sign(x[:, :, None] - x[:, None, :])  # (B, m, m)
    sy = np.sign(y[:, :, None] - y[:, None, :])
    out = np.zeros(x.shape[0])
    for first, second in ((x, y), (y, x)):
        perm = np.lexsort((second, first), axis=-1)[:, ::-1]  # descending by (first, second)
        rank = np.argsort(perm, axis=1)
        f = 1.0 / (rank + 1.0)
        w = f[:, :, None] + f[:, None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            out += (w * sx * sy).sum((1, 2)) / np.sqrt(
                (w * np.abs(sx)).sum((1, 2)) * (w * np.abs(sy)).sum((1, 2)))
    return out / 2


def predictor_values(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, dataset): every predictor (``source_top1`` and the estimator
    columns, :func:`suite.analysis.table.predictor_columns`), the first finite value over the
    settings' rows."""
    cols = [SOURCE] + T.predictor_columns(df)
    return df.groupby(["model", "dataset"])[cols].first()


def analyse_predictors(df: pd.DataFrame, setting: str, cfg, notes) -> dict[str, Any] | None:
    """``settings[setting]["predictors"]`` (module docstring); None without any estimator."""
    preds = [SOURCE] + T.predictor_columns(df)
    if len(preds) == 1:
        return None
    sub = df[df["setting"] == setting]
    values = predictor_values(df)
    rng = np.random.default_rng(cfg.seed)
    B = cfg.n_resamples
    datasets = sorted(sub["dataset"].unique())
    per_dataset: dict[str, dict] = {}
    boot: dict[str, np.ndarray] = {}  # dataset -> (B, P) tau_w replicates
    for ds in datasets:
        rows = sub[sub["dataset"] == ds].set_index("model")
        models = list(rows.index)
        m = len(models)
        acc = stats.logit(rows["accuracy"].to_numpy(np.float64))
        if m < MIN_MODELS:
            notes.add(f"Predictors, setting {setting}, dataset {ds}: only {m} model(s); rank "
                      "correlations over so few models mean little (reported anyway).")
        idx = stats.resample_indices(rng, m, B) if m >= 2 else np.zeros((B, max(m, 1)), int)
        reps = np.full((B, len(preds)), np.nan)
        entry: dict[str, dict] = {}
        for j, p in enumerate(preds):
            v = values.reindex([(mo, ds) for mo in models])[p].to_numpy(np.float64)
            ok = np.isfinite(v) & np.isfinite(acc)
            score = stats.logit(v) if p == SOURCE else v
            entry[p] = _point(score[ok], acc[ok], v[ok])
            if ok.sum() >= 2:
                xs, ys = score[idx], acc[idx]
                okb = ok[idx]
                if ok.all():
                    reps[:, j] = weighted_tau(xs, ys)
                else:  # drop the models without this predictor from each resample
                    for b in range(B):
                        sel = okb[b]
                        reps[b, j] = weighted_tau(xs[b, sel][None], ys[b, sel][None])[0] \
                            if sel.sum() >= 2 else np.nan
            lo, hi = _pct(reps[:, j], cfg.confidence)
            entry[p]["tau_w_ci"] = [lo, hi] if entry[p]["tau_w"] is not None else [None, None]
            if entry[p]["tau_w"] is None and ok.sum() >= 2:
                notes.add(f"Predictors, setting {setting}, dataset {ds}: {p} is constant over "
                          "the models (or so is the accuracy); its tau is undefined (NaN).")
            missing = [mo for mo, o in zip(models, ok) if not o]
            if missing and p != SOURCE:
                notes.add(f"Predictors, setting {setting}, dataset {ds}: no {p} for "
                          f"{', '.join(missing)}; its correlations use the other "
                          f"{int(ok.sum())} models.")
        per_dataset[ds] = entry
        boot[ds] = reps
    mean, mean_ci, vs = {}, {}, {}
    if boot:
        allreps = np.stack([boot[d] for d in datasets], axis=2)  # (B, P, D)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mrep = np.nanmean(allreps, axis=2)  # (B, P)
        for j, p in enumerate(preds):
            taus = [per_dataset[d][p]["tau_w"] for d in datasets]
            taus = [t for t in taus if t is not None]
            mean[p] = float(np.mean(taus)) if taus else None
            lo, hi = _pct(mrep[:, j], cfg.confidence)
            mean_ci[p] = [lo, hi] if mean[p] is not None else [None, None]
            if p == SOURCE or mean[p] is None or mean[SOURCE] is None:
                continue
            diff = mrep[:, j] - mrep[:, 0]
            diff = diff[np.isfinite(diff)]
            lo, hi = _pct(diff, cfg.confidence)
            p_val = None
            if diff.size:
                less = (np.sum(diff <= 0) + 1) / (diff.size + 1)
                greater = (np.sum(diff >= 0) + 1) / (diff.size + 1)
                p_val = float(min(1.0, 2 * min(less, greater)))
            vs[p] = {"diff": mean[p] - mean[SOURCE], "ci": [lo, hi], "p_value": p_val}
    ranking = sorted((p for p in preds if mean.get(p) is not None), key=lambda p: -mean[p])
    return {"predictors": preds, "per_dataset": per_dataset, "mean_tau_w": mean,
            "mean_tau_w_ci": mean_ci, "vs_source_top1": vs, "ranking": ranking,
            "n_resamples": B}


def _point(score: np.ndarray, acc: np.ndarray, raw: np.ndarray) -> dict[str, Any]:
    n = len(score)
    out: dict[str, Any] = {"n_models": int(n), "tau_w": None, "kendall": None,
                           "spearman": None, "pearson": None}
    if n < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["tau_w"] = stats._f(weighted_tau(score[None], acc[None])[0])
        out["kendall"] = stats._f(sps.kendalltau(score, acc).statistic)
        out["spearman"] = stats._f(sps.spearmanr(score, acc).statistic) if n > 2 else \
            out["kendall"]
        out["pearson"] = stats._f(stats.pearson(score, acc))
    return out


def _pct(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None, None
    a = (1 - confidence) / 2
    return stats._f(np.quantile(v, a)), stats._f(np.quantile(v, 1 - a))


def attach(df: pd.DataFrame, res: dict[str, Any], cfg, notes) -> None:
    """Add ``predictors`` to every setting of ``res`` (a setting left out of the main analysis
    for too few models gets a minimal entry, so the predictors are still reported)."""
    if df.empty or not T.predictor_columns(df):
        return
    for s in T.settings_of(df):
        pr = analyse_predictors(df, s, cfg, notes)
        if pr is None:
            continue
        entry = res["settings"].setdefault(s, {
            "models": sorted(df.loc[df["setting"] == s, "model"].unique()), "datasets": [],
            "per_dataset": {}, "aggregate": None, "adjusted": None})
        entry["predictors"] = pr


# --------------------------------------------------------------------------- figure / report


def draw(res: dict[str, Any], fig_dir: Path) -> dict[str, Path]:
    """``predictors.png``: per setting, mean tau_w per predictor (bar, bootstrap interval) and
    each dataset's tau_w (dots), best first."""
    settings = [s for s, r in res["settings"].items() if r.get("predictors")]
    if not settings:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.6),
                             squeeze=False, sharex=True)
    for ax, s in zip(axes[0], settings):
        pr = res["settings"][s]["predictors"]
        order = pr["ranking"][::-1]
        for i, p in enumerate(order):
            m = pr["mean_tau_w"][p]
            lo, hi = pr["mean_tau_w_ci"][p]
            ax.barh(i, m, color="#c44e52" if p == SOURCE else "#4c72b0", alpha=0.8)
            if lo is not None and hi is not None:
                ax.plot([lo, hi], [i, i], color="black", lw=1)
            pts = [v[p]["tau_w"] for v in pr["per_dataset"].values()
                   if v.get(p, {}).get("tau_w") is not None]
            ax.scatter(pts, [i] * len(pts), s=10, color="black", zorder=3)
        ax.set_yticks(range(len(order)), order, fontsize=8)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlim(-1.05, 1.05)
        ax.set_title(s, fontsize=10)
        ax.set_xlabel("weighted Kendall τ_w with transfer accuracy")
    fig.tight_layout()
    path = Path(fig_dir) / "predictors.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"predictors": path}


def _n(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _ci(ci) -> str:
    return "[–]" if not ci or ci[0] is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def rows(res: dict[str, Any], setting: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the ranking table of one setting: rank, predictor, mean tau_w and its
    interval, difference from source_top1 with interval and p, then tau_w per dataset."""
    pr = res["settings"][setting]["predictors"]
    datasets = list(pr["per_dataset"])
    header = ["#", "predictor", "mean τ_w", "CI", "Δ vs source_top1", "CI", "p"] + datasets
    out = []
    listed = pr["ranking"] + [p for p in pr["predictors"] if p not in pr["ranking"]]
    for i, p in enumerate(listed):
        vs = pr["vs_source_top1"].get(p)
        out.append([str(i + 1) if p in pr["ranking"] else "–", p, _n(pr["mean_tau_w"].get(p)),
                    _ci(pr["mean_tau_w_ci"].get(p)),
                    "–" if not vs else f"{vs['diff']:+.3f}", "" if not vs else _ci(vs["ci"]),
                    "" if not vs or vs["p_value"] is None else f"{vs['p_value']:.3f}"]
                   + [_n(pr["per_dataset"][d].get(p, {}).get("tau_w")) for d in datasets])
    return header, out


def html_section(res: dict[str, Any], figures: dict[str, Path], html_table, img) -> list[str]:
    """The report's section: one ranking table per setting and the figure."""
    settings = [s for s, r in res["settings"].items() if r.get("predictors")]
    if not settings:
        return []
    parts = ["<h2>Which predictor ranks the models best?</h2>",
             "<p>Weighted Kendall τ_w (scipy.stats.weightedtau defaults) between each predictor "
             "and transfer accuracy over models, per dataset; mean over datasets with a "
             "percentile bootstrap interval resampling models; Δ: paired bootstrap difference "
             "of mean τ_w from source_top1 (two-sided p). Estimators are scored on the target "
             "training split (suite.estimators; higher = better for all).</p>"]
    for s in settings:
        header, body = rows(res, s)
        parts.append(f"<h3>{s}</h3>" + html_table(header, body))
    if "predictors" in figures:
        parts.append(img(figures["predictors"], "predictors"))
    return parts


def print_summary(res: dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(width=150)
    for s, r in res["settings"].items():
        if not r.get("predictors"):
            continue
        header, body = rows(res, s)
        t = Table(title=f"{s}: predictors of transfer accuracy (weighted Kendall τ_w)",
                  title_justify="left")
        for i, h in enumerate(header):
            t.add_column(escape(h), justify="left" if i == 1 else "right")
        for row in body:
            t.add_row(*(escape(c) for c in row))
        console.print(t)


__all__ = ["analyse_predictors", "attach", "draw", "html_section", "predictor_values",
           "print_summary", "rows", "weighted_tau"]
