"""Stage ``analyze``: how well does source accuracy predict transfer accuracy?

Entry point :func:`run_analysis`. It reads the study back from MLflow (or a CSV), builds the
tidy table (:mod:`suite.analysis.table`), computes the statistics on log-odds accuracies
(:mod:`suite.analysis.stats`), draws the figures (:mod:`suite.analysis.figures`) and writes the
console summary, JSON and HTML report (:mod:`suite.analysis.report`).

Statistics per setting (logistic / finetune / scratch):

* per dataset: Pearson r and Spearman ρ between source and transfer log-odds over the models
  that have the dataset, 95% BCa bootstrap CIs resampling models with the percentile interval
  of the same resamples beside them (and a note naming the row when the BCa correction is too
  large to trust, :func:`stats.bca_flags`), permutation p-values;
* aggregate: the paper's summary (per-model mean log-odds over datasets; models missing a
  dataset are left out of it) and a dataset-adjusted summary (each dataset's mean removed
  first; keeps every model), each correlated with source log-odds, with CIs;
* which models are significantly worse than the best (paired t-test over datasets, Holm);
* training choices: model pairs that differ in exactly one of bn_scale, label_smoothing,
  dropout, aux_head; change in source accuracy and in transfer log-odds (CI over datasets), in
  the logistic and fine-tune settings (scratch is left out: the choices only change
  pretraining, so a variant's scratch network is its baseline's);
* fine-tune vs scratch: final accuracy difference per dataset and the convergence speed-up
  from the ``curve_test_accuracy`` histories of the fine-tune / scratch runs: per dataset the
  median over models, counting the models whose fine-tuning never reached scratch's final
  accuracy as slower than all others, with how many reached it
  (:func:`stats.median_speedup`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.markup import escape

from suite import tracking
from suite.analysis import predictors, stats, table
from suite.config import AnalysisConfig, Setting
from suite.errors import SuiteError
from suite.progress import console, status

MIN_MODELS = 3  # below this a correlation (and its bootstrap) means nothing
# Below this many models say that the intervals undercover. Measured (benchmarks/analysis.md,
# benchmarks/bca_coverage.py: Pearson r of bivariate normal data, ρ = 0.5 and 0.9, 4000
# simulated studies per n): nominal-95% percentile intervals covered the true r in 85-90% of
# studies at n = 5-7 and 89-92% from n = 10 on; BCa ones 92-96% from n = 7 (a 7-model BCa
# interval can still be tight only because it sits in one tail: see stats.bca_flags). 10 is the
# smallest n at which both reach about 90%.
FEW_MODELS = 10


@dataclass
class AnalysisResult:
    """What :func:`run_analysis` produced."""

    table: pd.DataFrame  # the tidy table that was analysed (after checks)
    stats: dict[str, Any]  # every number (the JSON content)
    warnings: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    json_path: Path | None = None
    html_path: Path | None = None
    csv_path: Path | None = None
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG in out_dir
    run_id: str | None = None  # the analysis run (None when not logged)


class _Notes(list):
    """Warnings: shown on the console as they arise and collected for the JSON / report."""

    def add(self, message: str) -> None:
        console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)
        self.append(message)

    def extend_all(self, messages: Iterable[str]) -> None:
        for m in messages:
            self.add(m)


# ---------------------------------------------------------------------------------------------
# statistics over a table


def analyse_setting(df: pd.DataFrame, setting: str, cfg: AnalysisConfig, notes: _Notes, *,
                    two_way: bool = False) -> dict | None:
    """All correlation statistics of one setting (see the module docstring)."""
    models, datasets, src, acc = table.matrix(df, setting)
    if len(models) < MIN_MODELS:
        notes.add(f"Setting {setting}: only {len(models)} model(s) ({', '.join(models)}); a "
                  f"correlation needs at least {MIN_MODELS}. Setting left out.")
        return None
    if len(models) < FEW_MODELS:
        notes.add(f"Setting {setting}: only {len(models)} models; bootstrap intervals over "
                  f"fewer than {FEW_MODELS} models cover the true correlation less often than "
                  "they claim (about 85-90% for a 95% percentile interval in simulation; "
                  "benchmarks/analysis.md). Compare the BCa and percentile intervals.")
    x = stats.logit(src)  # (m,)
    Y = stats.logit(acc)  # (m, D), NaN = missing
    kw = {"n_resamples": cfg.n_resamples, "confidence": cfg.confidence, "seed": cfg.seed}
    present = np.isfinite(Y)
    per_dataset: dict[str, dict] = {}
    # Datasets that have the same models share one vectorised bootstrap.
    groups: dict[bytes, list[int]] = defaultdict(list)
    for d, name in enumerate(datasets):
        mask = present[:, d]
        missing = [models[i] for i in np.nonzero(~mask)[0]]
        if mask.sum() < MIN_MODELS:
            notes.add(f"Setting {setting}, dataset {name}: only {int(mask.sum())} model(s) have "
                      f"results; left out of this setting's correlations (needs "
                      f"{MIN_MODELS}).")
            continue
        if missing:
            notes.add(f"Setting {setting}, dataset {name}: no result for {', '.join(missing)}; "
                      f"its correlation uses the other {int(mask.sum())} models.")
        groups[mask.tobytes()].append(d)
    for key, cols in groups.items():
        mask = np.frombuffer(key, dtype=bool)
        res = stats.correlate_columns(x[mask], Y[mask][:, cols], **kw)
        for d, r in zip(cols, res):
            per_dataset[datasets[d]] = r
            if r["pearson"] is None:
                notes.add(f"Setting {setting}, dataset {datasets[d]}: the correlation is "
                          "undefined (every model has the same transfer or source accuracy).")
    # Aggregates use only the datasets kept above (a dataset measured on one or two models
    # would otherwise drop every other model from the complete-case mean).
    kept = sorted(d for cols in groups.values() for d in cols)
    datasets = [datasets[d] for d in kept]
    Y, present = Y[:, kept], present[:, kept]
    per_dataset = {d: per_dataset[d] for d in datasets}

    complete = present.all(axis=1) if datasets else np.zeros(len(models), bool)
    out: dict[str, Any] = {"models": models, "datasets": datasets,
                           "source_top1": [float(v) for v in src],
                           "source_logit": [float(v) for v in x],
                           "per_dataset": per_dataset}
    if (~complete).any():
        notes.add(f"Setting {setting}: {', '.join(np.array(models)[~complete])} lack(s) some "
                  "datasets and are left out of the mean-log-odds aggregate (kept in the "
                  "dataset-adjusted one).")
    if complete.sum() >= MIN_MODELS:
        Yc = Y[complete]
        agg = stats.aggregate_correlation(x[complete], Yc, two_way=two_way, **kw)
        agg["models"] = [m for m, c in zip(models, complete) if c]
        # Figure-1 error bars: standard error of each model's mean log-odds across datasets.
        D = Yc.shape[1]
        agg["se"] = [stats._f(v) for v in (Yc.std(axis=1, ddof=1) / math.sqrt(D)
                                           if D > 1 else np.full(len(Yc), np.nan))]
        out["aggregate"] = agg
        out["worse_than_best"] = stats.worse_than_best(agg["models"], Yc)
    else:
        why = (f"fewer than {MIN_MODELS} models have every kept dataset" if datasets else
               f"no dataset has results for {MIN_MODELS} models")
        notes.add(f"Setting {setting}: {why}; no mean-log-odds aggregate.")
        out["aggregate"] = None
    has_any = present.any(axis=1)
    if has_any.sum() >= MIN_MODELS:
        adj = stats.aggregate_correlation(x[has_any], Y[has_any], adjusted=True,
                                          two_way=two_way, **kw)
        adj["models"] = [m for m, c in zip(models, has_any) if c]
        out["adjusted"] = adj
    else:
        out["adjusted"] = None
    _note_bca_flags(setting, out, notes)
    return out


def _note_bca_flags(setting: str, res: dict, notes: _Notes) -> None:
    """One note per row (aggregate or dataset) whose BCa intervals :func:`stats.bca_flags`
    distrusts, naming the statistic, why, and the percentile interval beside it."""
    rows = [("mean over datasets", res.get("aggregate")), ("dataset-adjusted", res.get("adjusted")),
            *((f"dataset {d}", v) for d, v in res["per_dataset"].items())]
    for label, row in rows:
        if not row:
            continue
        parts = []
        for key, name in (("pearson", "Pearson r"), ("spearman", "Spearman ρ")):
            flags = (row.get(f"{key}_bca") or {}).get("flags")
            if flags:
                parts.append(f"{name} BCa {_fmt_ci(row[f'{key}_ci'])} vs percentile "
                             f"{_fmt_ci(row[f'{key}_ci_pct'])}: " + "; ".join(flags))
        if parts:
            notes.add(f"Setting {setting}, {label}: BCa corrections too large to trust; the "
                      "interval is moved far into one tail of the bootstrap distribution ("
                      + " — ".join(parts) + "). In simulation such 95% intervals covered the true "
                      "correlation in only 72-96% of studies and the percentile intervals "
                      "beside them in 48-91% (benchmarks/analysis.md): treat both as "
                      "optimistic.")


def _fmt_ci(ci) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "[–]"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


# Training choices that only change pretraining: target training uses one recipe for every
# variant (suite.finetune), so the scratch setting cannot see them (a variant's scratch network
# is its baseline's) and is left out of their comparison.
PRETRAINING_ONLY_CHOICES = frozenset(table.CHOICES)


def choice_pairs(design: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(baseline model, variant model, choice) for model pairs whose design (architecture,
    width, depth, the four training choices, and the rest of the pretraining recipe, the
    ``recipe`` column) differs in exactly one training choice. The baseline has the choice off
    (bn_scale on, no smoothing / dropout / aux head) or, if neither does, the smaller value."""
    cols = [c for c in table.DESIGN + ("recipe",) if c in design.columns]
    if not any(c in design.columns for c in table.CHOICES):
        return []
    norm = design[cols].astype(object).where(design[cols].notna(), None)
    names = list(design.index)
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = norm.loc[names[i]], norm.loc[names[j]]
            diff = [c for c in cols if a[c] != b[c]]
            if len(diff) != 1 or diff[0] not in table.CHOICES:
                continue
            c = diff[0]
            default = table.CHOICE_DEFAULTS[c]
            if b[c] == default or (a[c] != default and _lt(b[c], a[c])):
                pairs.append((names[j], names[i], c))
            else:
                pairs.append((names[i], names[j], c))
    return pairs


def _lt(u, v) -> bool:
    try:
        return u < v
    except TypeError:
        return str(u) < str(v)


def analyse_choices(df: pd.DataFrame, settings: Sequence[str], cfg: AnalysisConfig,
                    notes: _Notes) -> list[dict]:
    """Training-choice study: for each pair from :func:`choice_pairs`, the change (variant -
    baseline) in source top-1 and, per setting, in transfer log-odds over the datasets both
    have (mean with a BCa CI resampling datasets, and per dataset). Scratch is skipped for
    :data:`PRETRAINING_ONLY_CHOICES` (all four), even where a table has per-model scratch
    rows."""
    des = table.design(df)
    if not any(c in des.columns for c in table.CHOICES):
        notes.add("Training-choice study skipped: the table has no training-choice columns "
                  "(bn_scale, label_smoothing, dropout, aux_head; they come from registered "
                  "version tags).")
        return []
    pairs = choice_pairs(des)
    if not pairs:
        notes.add("Training-choice study: no two models differ in exactly one training choice.")
        return []
    out = []
    for base, var, choice in pairs:
        sb, sv = float(des.loc[base, "source_top1"]), float(des.loc[var, "source_top1"])
        item: dict[str, Any] = {
            "choice": choice, "baseline": base, "variant": var,
            "baseline_value": _plain(des.loc[base, choice]),
            "variant_value": _plain(des.loc[var, choice]),
            "delta_source_top1": sv - sb,
            "delta_source_logit": float(stats.logit(sv) - stats.logit(sb)),
            "settings": {},
        }
        for setting in settings:
            if setting == Setting.scratch.value and choice in PRETRAINING_ONLY_CHOICES:
                continue
            sub = df[df["setting"] == setting]
            acc = sub.pivot(index="model", columns="dataset", values="accuracy")
            if base not in acc.index or var not in acc.index:
                continue
            both = acc.loc[[base, var]].dropna(axis=1)
            if both.shape[1] == 0:
                continue
            delta = stats.logit(both.loc[var].to_numpy()) - stats.logit(both.loc[base].to_numpy())
            ci = stats.mean_ci_over_datasets(delta[None, :], n_resamples=cfg.n_resamples,
                                             confidence=cfg.confidence, seed=cfg.seed)
            item["settings"][setting] = {
                "delta_logit": stats._f(ci["estimate"][0]),
                "delta_logit_ci": [stats._f(ci["low"][0]), stats._f(ci["high"][0])],
                "delta_accuracy": float((both.loc[var] - both.loc[base]).mean()),
                "n_datasets": int(both.shape[1]),
                "per_dataset": {d: float(v) for d, v in zip(both.columns, delta)},
            }
        out.append(item)
    return out


def _plain(v):
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def analyse_finetune_vs_scratch(df: pd.DataFrame, notes: _Notes) -> dict | None:
    """Final accuracy difference (fine-tune - scratch, points) per dataset and, from the
    ``curve_test_accuracy`` histories of the runs, the convergence speed-up per (model,
    dataset) (:func:`stats.convergence_speedup`) and its median per dataset with the counts
    of cells and of cells that reached scratch's final accuracy (:func:`stats.median_speedup`:
    ``median_speedup`` is None and ``median_speedup_below`` bounds it when half or fewer
    reached).

    Each fine-tuned model is compared with the scratch run of its own network: study tables
    carry ``scratch_network`` (one scratch row per architecture, under a representative
    model), so every variant of an architecture is paired with that one row; tables without
    it (CSV input) pair by model name."""
    ft = df[df["setting"] == Setting.finetune.value]
    sc = df[df["setting"] == Setting.scratch.value]
    by = ("scratch_network" if "scratch_network" in df.columns
          and df["scratch_network"].notna().any() else "model")
    cols = ["accuracy"] + (["run_id"] if "run_id" in df.columns else [])
    scratch = sc.drop_duplicates([by, "dataset"]).set_index([by, "dataset"])[cols]
    ft = ft.join(scratch.add_suffix("_scratch"), on=[by, "dataset"], how="inner")
    ft = ft.set_index(["model", "dataset"])
    common = ft.index
    if len(common) == 0:
        if (df["setting"] == Setting.finetune.value).any() or len(sc):
            notes.add("Fine-tune vs scratch: no (model, dataset) has both settings; skipped.")
        return None
    curves_ok = "run_id" in df.columns
    if not curves_ok:
        notes.add("Fine-tune vs scratch: the table has no run ids (CSV input), so learning "
                  "curves and convergence speed-ups are not available.")
    cells = []
    for model, dataset in common:
        cell: dict[str, Any] = {
            "model": model, "dataset": dataset,
            "finetune": float(ft.loc[(model, dataset), "accuracy"]),
            "scratch": float(ft.loc[(model, dataset), "accuracy_scratch"]),
        }
        cell["diff"] = cell["finetune"] - cell["scratch"]
        if curves_ok:
            rf = ft.loc[(model, dataset), "run_id"]
            rs = ft.loc[(model, dataset), "run_id_scratch"]
            cf = tracking.metric_history(rf, "curve_test_accuracy") if _ok(rf) else []
            cs = tracking.metric_history(rs, "curve_test_accuracy") if _ok(rs) else []
            cell["curve_finetune"] = [[int(s), float(v)] for s, v in cf]
            cell["curve_scratch"] = [[int(s), float(v)] for s, v in cs]
            cell.update(stats.convergence_speedup(cf, cs))
        cells.append(cell)
    if curves_ok and not any(c.get("curve_finetune") and c.get("curve_scratch") for c in cells):
        notes.add("Fine-tune vs scratch: the runs have no curve_test_accuracy history; no "
                  "convergence speed-ups.")
    per_dataset = {}
    for dataset in sorted({c["dataset"] for c in cells}):
        cs = [c for c in cells if c["dataset"] == dataset]
        diffs = np.array([c["diff"] for c in cs])
        per_dataset[dataset] = {
            "mean_diff": float(diffs.mean()), "min_diff": float(diffs.min()),
            "max_diff": float(diffs.max()), "n_models": len(cs),
            **stats.median_speedup(cs),
        }
        stuck = [c["model"] for c in cs if c.get("steps_scratch") == 0.0]
        if stuck:
            notes.add(f"Fine-tune vs scratch, dataset {dataset}: scratch training of "
                      f"{', '.join(stuck)} never improved on its first evaluation (its final "
                      "accuracy is reached at step 0), so its speed-up compares with no "
                      "training at all.")
    return {"per_dataset": per_dataset, "cells": cells}


def _ok(run_id) -> bool:
    return isinstance(run_id, str) and bool(run_id) and run_id != "nan"


def analyse(df: pd.DataFrame, cfg: AnalysisConfig, notes: _Notes, *,
            two_way: bool = False) -> dict[str, Any]:
    """Every statistic of a clean table (see :func:`table.clean`), as a JSON-ready dict."""
    settings = table.settings_of(df)
    out: dict[str, Any] = {
        "study": cfg.study, "n_resamples": cfg.n_resamples, "confidence": cfg.confidence,
        "seed": cfg.seed, "two_way": two_way, "logit_eps": stats.LOGIT_EPS,
        "n_models": int(df["model"].nunique()), "n_datasets": int(df["dataset"].nunique()),
        "settings": {},
    }
    for s in settings:
        with status(f"Bootstrapping {s} ({cfg.n_resamples} resamples)"):
            res = analyse_setting(df, s, cfg, notes, two_way=two_way)
        if res is not None:
            out["settings"][s] = res
    predictors.attach(df, out, cfg, notes)  # settings[S]["predictors"]
    out["choices"] = analyse_choices(df, settings, cfg, notes)
    out["finetune_vs_scratch"] = analyse_finetune_vs_scratch(df, notes)
    return out


# ---------------------------------------------------------------------------------------------
# metrics for the analysis run


def _metric_name(*parts: str) -> str:
    # MLflow metric names allow letters, digits, _ - . / and space.
    return ".".join(re.sub(r"[^A-Za-z0-9_\-/ ]", "_", p) for p in parts)


def headline_metrics(res: dict[str, Any]) -> dict[str, float]:
    """Every headline number as a metric: ``<setting>.pearson``, ``<setting>.pearson_ci_low``
    (BCa), ``<setting>.pearson_ci_pct_low`` (percentile), ``<setting>.pearson_bca_z0`` / ``_a``
    / ``_flagged`` (1 when :func:`stats.bca_flags` distrusts the BCa interval), ...,
    ``<setting>.adjusted.*``, ``<setting>.<dataset>.*``, ``choice.<choice>.<variant>.*``,
    ``finetune_vs_scratch.<dataset>.*`` (``mean_diff``, ``median_speedup`` when finite,
    ``median_speedup_below`` when only bounded, ``speedup_cells``, ``speedup_reached``,
    ``speedup_infinite``)."""
    m: dict[str, float] = {}

    def put(prefix: tuple[str, ...], d: dict, keys=("pearson", "spearman")):
        for k in keys:
            if d.get(k) is not None:
                m[_metric_name(*prefix, k)] = d[k]
            # <k>_ci_* is the BCa interval, <k>_ci_pct_* the percentile one
            for ci_key in (f"{k}_ci", f"{k}_ci_pct"):
                for side, v in zip(("low", "high"), d.get(ci_key) or ()):
                    if v is not None:
                        m[_metric_name(*prefix, f"{ci_key}_{side}")] = v
            bca = d.get(f"{k}_bca")
            if bca:
                for term in ("z0", "a"):
                    if bca.get(term) is not None:
                        m[_metric_name(*prefix, f"{k}_bca_{term}")] = bca[term]
                m[_metric_name(*prefix, f"{k}_bca_flagged")] = float(bool(bca["flags"]))
        for k in ("p_value", "n_models"):
            if d.get(k) is not None:
                m[_metric_name(*prefix, k)] = d[k]

    for s, r in res["settings"].items():
        for p, v in ((r.get("predictors") or {}).get("mean_tau_w") or {}).items():
            if v is not None:  # predictor.<setting>.<predictor>.mean_tau_w
                m[_metric_name("predictor", s, p, "mean_tau_w")] = v
        if r.get("aggregate"):
            put((s,), r["aggregate"])
        if r.get("adjusted"):
            put((s, "adjusted"), r["adjusted"])
        for d, v in r["per_dataset"].items():
            put((s, d), v)
    for c in res.get("choices") or []:
        for s, v in c["settings"].items():
            put(("choice", c["choice"], c["variant"], s), v, keys=("delta_logit",))
        m[_metric_name("choice", c["choice"], c["variant"], "delta_source_top1")] = \
            c["delta_source_top1"]
    fvs = res.get("finetune_vs_scratch") or {}
    for d, v in (fvs.get("per_dataset") or {}).items():
        m[_metric_name("finetune_vs_scratch", d, "mean_diff")] = v["mean_diff"]
        # median_speedup only when it is a finite number; the counts say how many cells it
        # stands for; median_speedup_below when the median is only bounded (half or fewer
        # reached scratch's final accuracy).
        for k in ("median_speedup", "median_speedup_below"):
            if isinstance(v.get(k), float):
                m[_metric_name("finetune_vs_scratch", d, k)] = v[k]
        for k in ("speedup_cells", "speedup_reached", "speedup_infinite"):
            if v.get("speedup_cells"):
                m[_metric_name("finetune_vs_scratch", d, k)] = v[k]
    return {k: float(v) for k, v in m.items() if v is not None and math.isfinite(float(v))}


# ---------------------------------------------------------------------------------------------
# the stage


def default_out_dir(cfg: AnalysisConfig) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir).expanduser().resolve()
    ws = tracking._CURRENT.workspace if tracking._CURRENT else tracking.resolve_workspace()
    return ws / "reports" / tracking.safe_name(cfg.study)


def run_analysis(cfg: AnalysisConfig, *, from_csv: str | Path | None = None,
                 to_csv: str | Path | None = None, json_out: str | Path | None = None,
                 settings: Sequence[str | Setting] | None = None,
                 tsne_models: Sequence[str] | None = None, log: bool = True,
                 two_way: bool = False) -> AnalysisResult:
    """Analyse a study and report it.

    Reads: the Model Registry versions and the FINISHED probe / finetune runs of experiment
    ``cfg.study`` (or, with ``from_csv``, a CSV ``model,source_top1,dataset,setting,accuracy``),
    the ``curve_test_accuracy`` histories of fine-tune / scratch runs, and cached penultimate
    features (``suite.features.cache_path``) for the t-SNE of ``tsne_models`` (two names).

    Writes, in ``cfg.out_dir`` (default ``<workspace>/reports/<study>``): ``table.csv`` (the
    tidy table), ``analysis.json`` (every number, warnings included), ``report.html``
    (self-contained, figures embedded), ``figures/*.png``; ``to_csv`` / ``json_out`` if given;
    a summary table per setting on stdout. With ``log`` (the default, also for CSV input) an
    MLflow run (``suite.stage = analysis``) in the study's experiment gets the config as
    params, every headline number as a metric and all those files as artifacts (the tidy table
    and the correlation summary also as MLflow tables, the figures with ``log_figure``,
    :func:`_log_artifacts`); for a study read from MLflow, each setting's best model gets the
    registered-model alias ``best-<setting>`` (:func:`set_best_aliases`).

    ``settings`` restricts the analysis; ``two_way`` resamples datasets as well as models for
    the aggregate CIs. Bad input is reported in ``result.warnings`` and the analysis goes on
    with what is valid.
    """
    from suite.analysis import figures as figs
    from suite.analysis import report, tsne

    if cfg.n_resamples < 10:
        raise SuiteError(f"n_resamples={cfg.n_resamples} is too few for a bootstrap.",
                         "Use at least 1000 (2000 is the default).")
    if not 0.0 < cfg.confidence < 1.0:
        raise SuiteError(f"confidence={cfg.confidence} must be between 0 and 1.",
                         "Use e.g. 0.95.")
    notes = _Notes()
    if log or from_csv is None:
        tracking.current()
    if from_csv is not None:
        raw = table.read_csv(from_csv)
    else:
        with status(f"Reading study {cfg.study} from MLflow"):
            raw, msgs = table.load_study_table(cfg.study)
        notes.extend_all(msgs)
    if to_csv is not None:
        table.write_csv(raw, to_csv)
    df, msgs = table.clean(raw, settings)
    notes.extend_all(msgs)
    if df.empty:
        notes.add("Nothing left to analyse.")
    res = analyse(df, cfg, notes, two_way=two_way)

    out_dir = default_out_dir(cfg)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    embedding = None
    if tsne_models:
        embedding = tsne.embed_pair(df, tsne_models, seed=cfg.seed, notes=notes)
    with status("Drawing figures"):
        drawn = figs.make_all(df, res, embedding)
        # Kept open when logging: the analysis run gets them with mlflow.log_figure.
        figures = figs.save_all(drawn, fig_dir, close=not log)
    figures.update(predictors.draw(res, fig_dir))
    res["warnings"] = list(notes)
    result = AnalysisResult(table=df, stats=res, warnings=list(notes), out_dir=out_dir,
                            figures=figures)
    result.csv_path = table.write_csv(df, out_dir / "table.csv")
    result.json_path = out_dir / "analysis.json"
    run_id = None
    if log:
        run_id = _log_run(cfg, res, result, two_way)
        res["run_id"] = run_id
        if from_csv is None:
            res["aliases"] = set_best_aliases(cfg.study, res, df, run_id)
    report.write_json(res, result.json_path)
    if json_out is not None:
        report.write_json(res, Path(json_out))
    result.html_path = report.write_html(res, df, figures, out_dir / "report.html")
    if log:
        try:
            _log_artifacts(cfg, run_id, result, drawn, res)
        finally:
            import matplotlib.pyplot as plt

            for fig in drawn.values():
                plt.close(fig)
    result.run_id = run_id
    report.print_summary(res)
    predictors.print_summary(res)
    return result


def _log_run(cfg: AnalysisConfig, res: dict, result: AnalysisResult, two_way: bool) -> str:
    import mlflow

    with tracking.start_run(cfg.study, "analysis", tracking.run_tags(cfg.study, "analysis")) as run:
        tracking.log_config(cfg)
        mlflow.log_params({"two_way": str(two_way), "n_warnings": str(len(result.warnings))})
        metrics = headline_metrics(res)
        items = list(metrics.items())
        for i in range(0, len(items), 500):
            mlflow.log_metrics(dict(items[i:i + 500]))
        return run.info.run_id


# Artifacts of the analysis run that the MLflow UI shows as a table (mlflow.log_table).
RESULTS_TABLE = "tables/results.json"  # the tidy table, one row per (model, dataset, setting)
CORRELATIONS_TABLE = "tables/correlations.json"  # the summary rows of every setting


def correlation_rows(res: dict[str, Any]) -> pd.DataFrame:
    """The correlation summary of every setting as one table: setting, row (``mean over
    datasets``, ``dataset-adjusted`` or a dataset), Pearson r and Spearman ρ with their BCa
    and percentile intervals, permutation p, models."""
    rows = []
    for s, r in res["settings"].items():
        for label, d in (("mean over datasets", r.get("aggregate")),
                         ("dataset-adjusted", r.get("adjusted")),
                         *r["per_dataset"].items()):
            if not d:
                continue
            row: dict[str, Any] = {"setting": s, "row": label}
            for k in ("pearson", "spearman"):
                row[k] = d.get(k)
                for ci_key, name in ((f"{k}_ci", "bca"), (f"{k}_ci_pct", "pct")):
                    lo, hi = (d.get(ci_key) or (None, None))[:2]
                    row[f"{k}_{name}_low"], row[f"{k}_{name}_high"] = lo, hi
            row["p_value"], row["n_models"] = d.get("p_value"), d.get("n_models")
            rows.append(row)
    return pd.DataFrame(rows)


def _table_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with JSON-plain cells (numpy scalars and bools as Python values, NaN as None):
    what ``mlflow.log_table`` writes and the UI's table viewer reads."""
    out = df.astype(object).where(df.notna(), None)
    return out.map(_plain) if hasattr(out, "map") else out.applymap(_plain)


def _log_artifacts(cfg: AnalysisConfig, run_id: str, result: AnalysisResult,
                   drawn: dict[str, Any], res: dict[str, Any]) -> None:
    """Attach the report to the (finished) analysis run: ``report.html`` (the UI's artifact
    viewer renders it), ``analysis.json``, ``table.csv``; the tidy table and the correlation
    summary as MLflow tables (:data:`RESULTS_TABLE`, :data:`CORRELATIONS_TABLE`); every
    figure with ``mlflow.log_figure`` under ``figures/``."""
    c = tracking.client()
    for path in (result.csv_path, result.json_path, result.html_path):
        c.log_artifact(run_id, str(path))
    c.log_table(run_id, data=_table_frame(result.table), artifact_file=RESULTS_TABLE)
    corr = correlation_rows(res)
    if not corr.empty:
        c.log_table(run_id, data=_table_frame(corr), artifact_file=CORRELATIONS_TABLE)
    from suite.analysis.figures import DPI

    for name, fig in drawn.items():
        c.log_figure(run_id, fig, f"figures/{name}.png", save_kwargs={"dpi": DPI})


# Registered-model aliases the analysis sets: the study's best model of each setting (highest
# mean transfer log-odds over datasets, as the report's "Best" line), e.g. models:/NAME@best-
# logistic. One alias name per setting; moved off the study's other models when it changes.
BEST_ALIAS = "best-{setting}"


def set_best_aliases(study: str, res: dict[str, Any], df: pd.DataFrame,
                     run_id: str | None = None) -> dict[str, str]:
    """Point :data:`BEST_ALIAS` of each setting at the registered version of its best model;
    returns {setting: "models:/NAME@ALIAS"} (also tags ``suite.best.<setting>`` on the
    analysis run). Settings without a best model (too few models) are skipped."""
    if df.empty or not {"registered_name", "version"} <= set(df.columns):
        return {}
    names = sorted({str(n) for n in df["registered_name"].dropna()})
    out: dict[str, str] = {}
    for setting, r in res["settings"].items():
        best = (r.get("worse_than_best") or {}).get("best")
        rows = df[(df["model"] == best) & (df["setting"] == setting)]
        if not best or rows.empty:
            continue
        name, version = str(rows["registered_name"].iloc[0]), str(rows["version"].iloc[0])
        if not name or name == "nan" or not version or version == "nan":
            continue
        alias = tracking.set_alias(name, BEST_ALIAS.format(setting=setting), version,
                                   others=names)
        out[setting] = f"models:/{name}@{alias}"
        if run_id:
            tracking.client().set_tag(run_id, f"suite.best.{setting}", f"{name}/{version}")
    return out


__all__ = [
    "AnalysisResult",
    "analyse",
    "analyse_choices",
    "analyse_finetune_vs_scratch",
    "analyse_setting",
    "choice_pairs",
    "headline_metrics",
    "correlation_rows",
    "run_analysis",
    "set_best_aliases",
]
