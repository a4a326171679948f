"""Figures of the analysis (matplotlib, Agg backend: no display needed). Each ``draw_*`` returns a
Figure; :func:`make_all` draws every one the results allow, :func:`save_all` saves them as PNG
and returns {name: path}; :func:`draw_all` does both."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from suite.analysis import stats

_COLORS = plt.get_cmap("tab10")
DPI = 110  # of the saved PNGs (and of the copies the analysis run logs)


def _grid(n: int, cols: int = 4, size: float = 3.0):
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    # Fixed margins: tight_layout measures every tick label and costs seconds per figure.
    fig.subplots_adjust(left=0.8 / (size * cols), right=1 - 0.2 / (size * cols),
                        bottom=0.6 / (size * rows), top=1 - 0.6 / (size * rows),
                        wspace=0.35, hspace=0.55)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _fit_line(ax, x: np.ndarray, y: np.ndarray) -> None:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
        slope, icpt = np.polyfit(x[ok], y[ok], 1)
        xs = np.linspace(x[ok].min(), x[ok].max(), 2)
        ax.plot(xs, slope * xs + icpt, color="0.4", lw=1, ls="--")


def _r_title(name: str, d: dict | None) -> str:
    """Panel title: ``name: r = 0.85`` and, below, the BCa and percentile intervals of r (the
    BCa one marked * when stats.bca_flags distrusts it)."""
    if not d or d.get("pearson") is None:
        return name
    cis = []
    for label, key in (("BCa", "pearson_ci"), ("pct", "pearson_ci_pct")):
        ci = d.get(key) or [None, None]
        if None not in ci:
            flag = "*" if key == "pearson_ci" and (d.get("pearson_bca") or {}).get("flags") else ""
            cis.append(f"{label} [{ci[0]:.2f}, {ci[1]:.2f}]{flag}")
    return f"{name}: r = {d['pearson']:.2f}" + ("\n" + " · ".join(cis) if cis else "")


def draw_summary(res: dict[str, Any], key: str = "aggregate"):
    """Figure 1 of the paper: per-model mean transfer log-odds over datasets against source
    log-odds, one panel per setting; error bars = standard error across datasets; fit line."""
    settings = [s for s, r in res["settings"].items() if r.get(key)]
    if not settings:
        return None
    fig, axes = _grid(len(settings), cols=3, size=3.6)
    for ax, s in zip(axes, settings):
        r = res["settings"][s]
        agg = r[key]
        lookup = dict(zip(r["models"], r["source_logit"]))
        x = np.array([lookup[m] for m in agg["models"]])
        y = np.array([np.nan if v is None else v for v in agg["scores"]], dtype=float)
        yerr = None
        if key == "aggregate" and agg.get("se"):
            yerr = np.array([0.0 if v is None else v for v in agg["se"]], dtype=float)
        ax.errorbar(x, y, yerr=yerr, fmt="o", ms=4, capsize=2, color=_COLORS(0))
        for xi, yi, name in zip(x, y, agg["models"]):
            ax.annotate(name, (xi, yi), fontsize=6, alpha=0.7, xytext=(2, 2),
                        textcoords="offset points")
        _fit_line(ax, x, y)
        ax.set_title(_r_title(s, agg), fontsize=9)
        ax.set_xlabel("source top-1 (log-odds)")
        ax.set_ylabel("transfer (mean log-odds)" if key == "aggregate"
                      else "transfer (dataset-adjusted log-odds)")
    return fig


def draw_datasets(df: pd.DataFrame, res: dict[str, Any], setting: str):
    """Small multiples: transfer vs source log-odds, one panel per dataset of a setting."""
    r = res["settings"][setting]
    sub = df[df["setting"] == setting]
    datasets = r["datasets"]
    if not datasets:
        return None
    fig, axes = _grid(len(datasets), cols=4, size=2.8)
    for ax, d in zip(axes, datasets):
        rows = sub[sub["dataset"] == d]
        x = stats.logit(rows["source_top1"].to_numpy())
        y = stats.logit(rows["accuracy"].to_numpy())
        ax.scatter(x, y, s=12, color=_COLORS(1))
        _fit_line(ax, x, y)
        ax.set_title(_r_title(d, r["per_dataset"].get(d)), fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{setting}: transfer vs source log-odds per dataset", fontsize=10, y=0.995)
    return fig


def draw_choices(res: dict[str, Any]):
    """Change in source log-odds and in transfer log-odds (per setting, CI over datasets) for
    each pair of models differing in one training choice."""
    choices = res.get("choices") or []
    if not choices:
        return None
    present = {s for c in choices for s in c["settings"]}
    settings = [s for s in res["settings"] if s in present] + sorted(
        present - set(res["settings"]))
    labels = [f"{c['choice']}: {c['variant']}\nvs {c['baseline']}" for c in choices]
    n = len(choices)
    width = 0.8 / (len(settings) + 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * n + 2), 3.8))
    fig.subplots_adjust(bottom=0.25, left=0.8 / fig.get_figwidth(), right=0.97, top=0.95)
    pos = np.arange(n)
    ax.bar(pos, [c["delta_source_logit"] for c in choices], width, label="source",
           color="0.6")
    for k, s in enumerate(settings):
        vals, lo, hi = [], [], []
        for c in choices:
            v = c["settings"].get(s)
            est = v["delta_logit"] if v and v["delta_logit"] is not None else np.nan
            ci = v["delta_logit_ci"] if v else [None, None]
            vals.append(est)
            lo.append(est - ci[0] if ci[0] is not None else 0.0)
            hi.append(ci[1] - est if ci[1] is not None else 0.0)
        ax.bar(pos + (k + 1) * width, vals, width, yerr=[lo, hi], capsize=2, label=s,
               color=_COLORS(k))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(pos + width * len(settings) / 2)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("Δ log-odds (variant − baseline)")
    ax.legend(fontsize=7)
    return fig


def draw_curves(res: dict[str, Any]):
    """Fine-tune (solid) vs scratch (dashed) test-accuracy curves, one panel per dataset."""
    fvs = res.get("finetune_vs_scratch") or {}
    cells = [c for c in fvs.get("cells") or [] if c.get("curve_finetune") or
             c.get("curve_scratch")]
    if not cells:
        return None
    datasets = sorted({c["dataset"] for c in cells})
    models = sorted({c["model"] for c in cells})
    color = {m: _COLORS(i % 10) for i, m in enumerate(models)}
    fig, axes = _grid(len(datasets), cols=3, size=3.4)
    for ax, d in zip(axes, datasets):
        for c in (c for c in cells if c["dataset"] == d):
            for key, ls in (("curve_finetune", "-"), ("curve_scratch", "--")):
                if c.get(key):
                    s, v = zip(*c[key])
                    ax.plot(s, v, ls=ls, color=color[c["model"]], lw=1.2,
                            label=f"{c['model']} ({key.split('_')[1]})")
        ax.set_title(d, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=6)
    return fig


def draw_tsne(embedding: dict):
    """Two t-SNE maps of penultimate features (same images), coloured by class."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.3))
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.03, top=0.92, wspace=0.05)
    y = np.asarray(embedding["labels"])
    for ax, name, z in zip(axes, embedding["models"], embedding["points"]):
        z = np.asarray(z)
        ax.scatter(z[:, 0], z[:, 1], c=y, s=4, cmap="tab20")
        ax.set_title(f"{name} on {embedding['dataset']} ({embedding['split']})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def make_all(df: pd.DataFrame, res: dict[str, Any],
             embedding: dict | None) -> dict[str, Any]:
    """Every figure the results allow, by name (``summary``, ``adjusted``,
    ``datasets_<setting>``, ``choices``, ``curves``, ``tsne``): open matplotlib Figures."""
    figs = {"summary": draw_summary(res, "aggregate"), "adjusted": draw_summary(res, "adjusted")}
    for s in res["settings"]:
        figs[f"datasets_{s}"] = draw_datasets(df, res, s)
    figs["choices"] = draw_choices(res)
    figs["curves"] = draw_curves(res)
    if embedding:
        figs["tsne"] = draw_tsne(embedding)
    return {name: fig for name, fig in figs.items() if fig is not None}


def save_all(figs: dict[str, Any], out_dir: Path, *, close: bool = True) -> dict[str, Path]:
    """Save each figure as ``<out_dir>/<name>.png``; closed after unless ``close=False`` (the
    analysis run logs them with ``mlflow.log_figure`` first, then closes them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fig in figs.items():
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=DPI)
        if close:
            plt.close(fig)
        paths[name] = path
    return paths


def draw_all(df: pd.DataFrame, res: dict[str, Any], embedding: dict | None,
             out_dir: Path) -> dict[str, Path]:
    """Draw every figure the results allow and save each as ``<out_dir>/<name>.png``."""
    return save_all(make_all(df, res, embedding), out_dir)
