"""Outputs of the analysis: console summary (rich, stdout), JSON, self-contained HTML report."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from suite.analysis import FEW_MODELS, stats


def _num(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and not math.isfinite(v):
        return "–"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def _ci(ci) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "–"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _bca_ci(row: dict, key: str) -> str:
    """The BCa interval of ``key`` (pearson / spearman), marked ``*`` when its BCa terms are
    too large to trust (stats.bca_flags; the warnings say why)."""
    flagged = bool((row.get(f"{key}_bca") or {}).get("flags"))
    return _ci(row.get(f"{key}_ci")) + ("*" if flagged else "")


def speedup_text(v: dict) -> str:
    """A dataset's median convergence speed-up with its counts, e.g. ``1.42× (3 of 7 reached
    scratch's final accuracy)``, ``< 0.80× (...)`` when half or fewer reached (the median is
    then only bounded), ``∞×`` when fine-tuning starts above it; ``–`` without curves."""
    n = v.get("speedup_cells") or 0
    if not n:
        return "–"
    med, below = v.get("median_speedup"), v.get("median_speedup_below")
    if med is not None:
        head = "∞×" if med == "inf" else f"{med:.2f}×"
    else:
        head = "< ∞×" if below == "inf" else f"< {below:.2f}×"
    counts = f"{v['speedup_reached']} of {n} reached scratch's final accuracy"
    if v.get("speedup_infinite"):
        counts += f", {v['speedup_infinite']} at fine-tuning's first evaluation"
    return f"{head} ({counts})"


def _p(v) -> str:
    if v is None:
        return "–"
    return f"{v:.2g}" if v < 0.01 else f"{v:.3f}"


def _summary_row(label: str, v: dict) -> list[str]:
    return [label, _num(v["pearson"]), _bca_ci(v, "pearson"), _ci(v.get("pearson_ci_pct")),
            _num(v["spearman"]), _bca_ci(v, "spearman"), _ci(v.get("spearman_ci_pct")),
            _p(v["p_value"]), str(v["n_models"])]


def summary_rows(res: dict[str, Any], setting: str) -> list[list[str]]:
    """Rows (name, r, r BCa CI, r percentile CI, ρ, ρ BCa CI, ρ percentile CI, p, n) of one
    setting: aggregates first, then datasets. A BCa CI ends in ``*`` when it is flagged."""
    r = res["settings"][setting]
    rows = []
    for label, key in (("mean over datasets", "aggregate"), ("dataset-adjusted", "adjusted")):
        if r.get(key):
            rows.append(_summary_row(label, r[key]))
    for d, v in r["per_dataset"].items():
        rows.append(_summary_row(d, v))
    return rows


HEADER = ["", "Pearson r", "95% BCa", "95% pct", "Spearman ρ", "95% BCa", "95% pct",
          "p (perm.)", "models"]


def _flag_note() -> str:
    return (f"* BCa correction too large to trust (|z0| > {stats.BCA_Z0_MAX}, |a| > "
            f"{stats.BCA_A_MAX}, quantiles outside {stats.BCA_ALPHA_LOW_MAX}–"
            f"{stats.BCA_ALPHA_HIGH_MIN}, or an end on the most extreme resample); see the "
            "warnings.")


def _any_flagged(rows: list[list[str]]) -> bool:
    return any(c.endswith("*") for r in rows for c in r)


def print_summary(res: dict[str, Any], console: Console | None = None) -> None:
    """A table per setting on stdout (rich), then the warnings count."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a file: do not squeeze the tables to 80 columns
            console = Console(width=150)
    level = round(100 * res.get("confidence", 0.95))
    for s in res["settings"]:
        t = Table(title=f"{s}: source vs transfer log-odds ({level}% CIs, BCa and percentile, "
                        f"{res['n_resamples']} resamples)", title_justify="left")
        for i, h in enumerate(HEADER):
            t.add_column(h.replace("95%", f"{level}%"), justify="left" if i == 0 else "right")
        rows = summary_rows(res, s)
        for row in rows:
            t.add_row(*(escape(c) for c in row))
        console.print(t)
        if _any_flagged(rows):
            console.print(escape("  " + _flag_note()), highlight=False)
        wtb = res["settings"][s].get("worse_than_best")
        if wtb and wtb["comparisons"]:
            worse = [c["model"] for c in wtb["comparisons"] if c["worse"]]
            console.print(escape(f"  best: {wtb['best']}; significantly worse (paired t, "
                                 f"Holm 5%): {', '.join(worse) or 'none'}"), highlight=False)
    for c in res.get("choices") or []:
        parts = [f"{s} Δlogit {_num(v['delta_logit'])} {_ci(v['delta_logit_ci'])}"
                 for s, v in c["settings"].items()]
        console.print(escape(f"choice {c['choice']}: {c['variant']} vs {c['baseline']}: "
                             f"Δsource {c['delta_source_top1']:+.2f} pts; " + "; ".join(parts)),
                      highlight=False)
    fvs = res.get("finetune_vs_scratch")
    if fvs:
        for d, v in fvs["per_dataset"].items():
            console.print(escape(f"fine-tune − scratch on {d}: {v['mean_diff']:+.2f} pts, "
                                 f"median speed-up {speedup_text(v)}"), highlight=False)
    if res.get("warnings"):
        console.print(f"[yellow]{len(res['warnings'])} warning(s)[/yellow] (in the JSON and "
                      "the report).")


def _json_safe(o):
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
    return o


def write_json(res: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(res), indent=2, allow_nan=False))
    return path


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{padding:3px 9px;border-bottom:1px solid
#ddd;text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}.warn{background:#fff6e0;padding:0.6em 1em;
border-left:4px solid #e0a000}code{background:#f4f4f4;padding:0 3px}
"""

_METHODS = f"""
<p>Accuracies (percent) are turned into log-odds <code>log(p/(1-p))</code> after clipping p to
[{stats.LOGIT_EPS:g}, 1 − {stats.LOGIT_EPS:g}], so 0% and 100% stay finite. For each setting and
dataset, Pearson r and Spearman ρ are computed between source (ImageNet) log-odds and transfer
log-odds over models. Confidence intervals are bias-corrected and accelerated (BCa) bootstrap
intervals resampling models (acceleration from the jackknife), shown beside the percentile
interval of the same resamples. Over few models BCa can be tight only because its corrections
move it into one tail of the bootstrap distribution; a BCa interval is marked * (and named in
the warnings) when the bias correction |z0| exceeds {stats.BCA_Z0_MAX}, the acceleration |a|
exceeds {stats.BCA_A_MAX} (it can never exceed 1/6), its quantiles start above
{stats.BCA_ALPHA_LOW_MAX} or end below {stats.BCA_ALPHA_HIGH_MIN}, or an end is the most extreme
resample. In simulation (benchmarks/analysis.md) such intervals covered the true correlation
less often than the others, and below {FEW_MODELS} models the percentile intervals covered it in
only about 85-90% of studies. p-values are two-sided permutation tests of the pairing of source
and transfer accuracy. The aggregate correlates each model's mean log-odds over datasets (the
paper's summary; models missing a dataset are left out); the dataset-adjusted aggregate first
removes each dataset's mean over the models that have it, then
averages over datasets (it keeps every model). Optionally datasets are resampled too (two-way).
A dataset with results for fewer than three models of a setting is left out of that setting.
"Significantly worse than the best": paired t-tests of log-odds differences across datasets
against the model with the highest mean, Holm-corrected. Training choices: pairs of models that
differ in exactly one of bn_scale, label_smoothing, dropout, aux_head (same architecture and the
same rest of the pretraining recipe); change in log-odds
(variant − baseline) averaged over datasets, BCa CI resampling datasets. Fine-tune vs scratch:
speed-up = steps scratch training needs to reach its final test accuracy ÷ steps fine-tuning
needs to reach it (linear interpolation between evaluations; ∞ when fine-tuning is there at its
first evaluation). A model whose fine-tuning never reaches it counts as slower than every model
that does (its speed-up is below scratch's steps ÷ fine-tuning's last step), so leaving it out
does not bias the median over models upward; when half or fewer reach it the median is only
bounded, shown as "&lt; bound". The counts say how many reached it.</p>
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_html(res: dict[str, Any], df: pd.DataFrame, figures: dict[str, Path],
               path: Path) -> Path:
    """A single self-contained HTML file: summary tables, figures (base64 PNG), warnings,
    method notes and the tidy table."""
    level = round(100 * res.get("confidence", 0.95))
    header = [h.replace("95%", f"{level}%") for h in HEADER]
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>suite analysis: "
              f"{html.escape(str(res['study']))}</title><style>{_CSS}</style></head><body>"),
             (f"<h1>Do better source models transfer better? — "
              f"{html.escape(str(res['study']))}</h1>"),
             (f"<p>{res['n_models']} models, {res['n_datasets']} datasets, settings: "
              f"{html.escape(', '.join(res['settings']) or 'none')}; {res['n_resamples']} "
              f"bootstrap resamples ({'models and datasets' if res.get('two_way') else 'models'}"
              f"), seed {res['seed']}.</p>")]
    if res.get("warnings"):
        items = "".join(f"<li>{html.escape(w)}</li>" for w in res["warnings"])
        parts.append(f"<div class='warn'><b>Left out / warnings</b><ul>{items}</ul></div>")
    parts.append("<h2>Correlations</h2>")
    for s in res["settings"]:
        parts.append(f"<h3>{html.escape(s)}</h3>")
        rows = summary_rows(res, s)
        parts.append(_html_table(header, rows))
        if _any_flagged(rows):
            parts.append(f"<p>{html.escape(_flag_note())}</p>")
        wtb = res["settings"][s].get("worse_than_best")
        if wtb and wtb["comparisons"]:
            rows = [[c["model"], _num(c["mean_logit_diff"]), _p(c["p_value"]), _p(c["p_holm"]),
                     "yes" if c["worse"] else "no"] for c in wtb["comparisons"]]
            parts.append(f"<p>Best (highest mean log-odds): <b>{html.escape(wtb['best'])}</b></p>")
            parts.append(_html_table(["model", "Δ mean log-odds (best − model)", "p", "p (Holm)",
                                      "significantly worse"], rows))
    for name, title in (("summary", "Mean transfer log-odds vs source log-odds"),
                        ("adjusted", "Dataset-adjusted")):
        if name in figures:
            parts.append(f"<h3>{title}</h3>" + _img(figures[name], title))
    per = [k for k in figures if k.startswith("datasets_")]
    if per:
        parts.append("<h2>Per dataset</h2>")
        parts.extend(_img(figures[k], k) for k in per)
    if res.get("choices"):
        parts.append("<h2>Training choices</h2>")
        rows = []
        for c in res["choices"]:
            for s, v in c["settings"].items():
                rows.append([c["choice"], f"{c['variant']} vs {c['baseline']}",
                             f"{c['baseline_value']} → {c['variant_value']}",
                             f"{c['delta_source_top1']:+.2f}", s, _num(v["delta_logit"]),
                             _ci(v["delta_logit_ci"]), str(v["n_datasets"])])
        parts.append(_html_table(["choice", "pair", "value", "Δ source top-1 (pts)", "setting",
                                  "Δ transfer log-odds", "CI", "datasets"], rows))
        if "choices" in figures:
            parts.append(_img(figures["choices"], "training choices"))
    fvs = res.get("finetune_vs_scratch")
    if fvs:
        parts.append("<h2>Fine-tuning vs training from scratch</h2>")
        rows = [[d, f"{v['mean_diff']:+.2f}", f"{v['min_diff']:+.2f}", f"{v['max_diff']:+.2f}",
                 speedup_text(v), str(v["n_models"])]
                for d, v in fvs["per_dataset"].items()]
        parts.append(_html_table(["dataset", "mean Δ accuracy (pts)", "min", "max",
                                  "median speed-up", "models"], rows))
        if "curves" in figures:
            parts.append(_img(figures["curves"], "learning curves"))
    if "tsne" in figures:
        parts.append("<h2>t-SNE of penultimate features</h2>" + _img(figures["tsne"], "t-SNE"))
    from suite.analysis import predictors

    parts.extend(predictors.html_section(res, figures, _html_table, _img))
    parts.append("<h2>Method</h2>" + _METHODS)
    cols = [c for c in ("model", "source_top1", "dataset", "setting", "accuracy") if c in df]
    rows = [[str(r[c]) if not isinstance(r[c], float) else f"{r[c]:.2f}" for c in cols]
            for _, r in df[cols].iterrows()]
    parts.append(f"<h2>Table</h2><details><summary>{len(rows)} rows</summary>"
                 + _html_table(cols, rows) + "</details>")
    if res.get("run_id"):
        parts.append(f"<p>MLflow run: <code>{html.escape(res['run_id'])}</code></p>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
