"""End-to-end analysis from a CSV: console summary, JSON, HTML, MLflow run, bad-input notes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from suite import tracking
from suite.analysis import run_analysis, stats, table
from suite.config import AnalysisConfig
from suite.errors import SuiteError

STUDY = "from-csv"


def _results(rng, models=6, datasets=("d1", "d2", "d3"), settings=("logistic", "finetune")):
    rows = []
    src = np.sort(rng.uniform(55, 80, models))
    for i, s in enumerate(src):
        for j, d in enumerate(datasets):
            for k, setting in enumerate(settings):
                acc = float(np.clip(s - 8 * j + 3 * k + rng.normal(0, 2), 0, 100))
                rows.append({"model": f"m{i}", "source_top1": float(s), "dataset": d,
                             "setting": setting, "accuracy": round(acc, 4)})
    return pd.DataFrame(rows)


def _bad(df: pd.DataFrame) -> pd.DataFrame:
    extra = pd.DataFrame([
        {**df.iloc[0].to_dict(), "accuracy": 120.0},  # out of range (and a duplicate cell)
        {**df.iloc[1].to_dict()},  # exact duplicate
        {"model": "m0", "source_top1": df.iloc[0]["source_top1"], "dataset": "d1",
         "setting": "tiny", "accuracy": 10.0},  # a setting with too few models
        {"model": "m1", "source_top1": df.loc[df["model"] == "m1", "source_top1"].iloc[0],
         "dataset": "d1", "setting": "tiny", "accuracy": 11.0},
        {"model": "m2", "source_top1": 99.0, "dataset": "d9", "setting": "finetune",
         "accuracy": 12.0},  # disagrees with m2's source accuracy; d9 has one model
    ])
    # m5 has no result on d3 in the logistic setting
    keep = ~((df["model"] == "m5") & (df["dataset"] == "d3") & (df["setting"] == "logistic"))
    return pd.concat([df[keep], extra], ignore_index=True)


def test_end_to_end_from_csv(store, tmp_path, capsys):
    rng = np.random.default_rng(0)
    clean = _results(rng)
    csv = tmp_path / "results.csv"
    _bad(clean).to_csv(csv, index=False)
    out = tmp_path / "report"
    cfg = AnalysisConfig(study=STUDY, n_resamples=300, seed=1, out_dir=str(out))
    res = run_analysis(cfg, from_csv=csv, json_out=tmp_path / "a.json")

    # --- JSON: the contract keys, numbers equal to SciPy on log-odds
    data = json.loads((tmp_path / "a.json").read_text())
    assert data == json.loads(res.json_path.read_text())
    lg = data["settings"]["logistic"]
    for key in ("pearson", "pearson_ci", "spearman", "spearman_ci", "n_models"):
        assert key in lg["aggregate"]
    assert lg["aggregate"]["n_models"] == 5  # m5 lacks d3: left out of the mean aggregate
    assert lg["adjusted"]["n_models"] == 6
    sub = clean[(clean["setting"] == "logistic") & (clean["dataset"] == "d1")]
    x, y = stats.logit(sub["source_top1"]), stats.logit(sub["accuracy"])
    d1 = lg["per_dataset"]["d1"]
    assert d1["pearson"] == pytest.approx(st.pearsonr(x, y).statistic)
    assert d1["spearman"] == pytest.approx(st.spearmanr(x, y).statistic)
    assert d1["pearson_ci"][0] <= d1["pearson"] <= d1["pearson_ci"][1]
    assert 0 < d1["p_value"] <= 1
    assert lg["per_dataset"]["d3"]["n_models"] == 5
    assert "tiny" not in data["settings"]
    assert data["settings"]["finetune"]["aggregate"]["n_models"] == 6  # d9 left out, not m0-m4
    assert "d9" not in data["settings"]["finetune"]["per_dataset"]

    # --- warnings: in the result, the JSON and the report
    text = " ".join(res.warnings)
    for needle in ("outside [0, 100]", "duplicate row", "Setting tiny: only 2 model(s)",
                   "dataset d3: no result for m5", "Model m2 has different source_top1",
                   "Setting finetune, dataset d9: only 1 model(s)"):
        assert needle in text, needle
    assert data["warnings"] == res.warnings

    # --- HTML: self-contained, with figures and warnings
    html = res.html_path.read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "dataset d3: no result for m5" in html and "src=\"http" not in html

    # --- console summary on stdout
    printed = capsys.readouterr().out
    assert "logistic" in printed and "Pearson r" in printed

    # --- MLflow: an analysis run in the study's experiment with metrics and artifacts
    runs = tracking.search_runs(STUDY, stage="analysis")
    assert len(runs) == 1 and runs[0].info.run_id == res.run_id == data["run_id"]
    metrics = runs[0].data.metrics
    assert metrics["logistic.pearson"] == pytest.approx(lg["aggregate"]["pearson"])
    assert metrics["logistic.pearson_ci_low"] == pytest.approx(lg["aggregate"]["pearson_ci"][0])
    assert metrics["logistic.d1.spearman"] == pytest.approx(d1["spearman"])
    assert runs[0].data.params["n_resamples"] == "300"
    client = tracking.client()
    names = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"table.csv", "analysis.json", "report.html", "figures"} <= names
    figs = {a.path for a in client.list_artifacts(res.run_id, "figures")}
    assert "figures/summary.png" in figs
    logged = table.read_csv(client.download_artifacts(res.run_id, "table.csv", str(tmp_path)))
    assert len(logged) == len(res.table)


def test_no_logging_and_tsne_from_feature_cache(store, tmp_path):
    from suite.analysis import tsne

    rng = np.random.default_rng(1)
    df = _results(rng, models=4, datasets=("d1",), settings=("logistic",))
    df["registered_name"] = "s-" + df["model"]
    df["version"] = "1"
    csv = table.write_csv(df, tmp_path / "r.csv")
    for m in ("m0", "m1"):
        path = tsne._cache_path(f"s-{m}", "1", "d1", "test")
        path.parent.mkdir(parents=True, exist_ok=True)
        y = np.repeat(np.arange(3), 12)
        x = rng.normal(size=(36, 8)).astype(np.float32) + y[:, None]
        np.savez(path, x=x, y=y)
    cfg = AnalysisConfig(study="nolog", n_resamples=100, out_dir=str(tmp_path / "out"))
    res = run_analysis(cfg, from_csv=csv, log=False, tsne_models=["m0", "s-m1"])
    assert res.run_id is None and tracking.client().get_experiment_by_name("nolog") is None
    assert "tsne" in res.figures and res.html_path.exists()
    assert not any("t-SNE" in w for w in res.warnings)

    class Notes(list):
        add = list.append

    notes = Notes()  # absent features: a note, not a failure
    assert tsne.embed_pair(res.table, ["m2", "m3"], notes=notes) is None
    assert "t-SNE skipped" in notes[0]


def test_wrong_csv_header_is_a_suite_error(tmp_path):
    csv = tmp_path / "r.csv"
    csv.write_text("net,imagenet,dataset,setting,accuracy\na,1,b,logistic,3\n")
    with pytest.raises(SuiteError, match="model,source_top1,dataset,setting,accuracy"):
        run_analysis(AnalysisConfig(out_dir=str(tmp_path)), from_csv=csv, log=False)


# --------------------------------------------------------------------------- BCa beside percentile

# Seven models whose aggregate Pearson r has z0 ≈ -1 (see tests/test_analysis_stats.py).
X7 = [-1.04, 1.47, -0.34, 3.76, -0.04, -0.3, 0.69]
Y7 = [-2.38, 1.5, -0.67, 2.26, 0.02, 0.15, 0.6]


def _seven_model_csv(tmp_path):
    rows = []
    for i, (x, y) in enumerate(zip(X7, Y7)):
        for d, shift in (("d1", 0.0), ("d2", 1.0), ("d3", -0.5)):
            rows.append({"model": f"m{i}", "source_top1": float(stats.expit_percent(x)),
                         "dataset": d, "setting": "logistic",
                         "accuracy": float(stats.expit_percent(y + shift))})
    return table.write_csv(pd.DataFrame(rows), tmp_path / "seven.csv")


def test_percentile_interval_and_bca_warning_everywhere(store, tmp_path, capsys):
    csv = _seven_model_csv(tmp_path)
    cfg = AnalysisConfig(study="seven", n_resamples=2000, seed=0, out_dir=str(tmp_path / "o"))
    res = run_analysis(cfg, from_csv=csv)
    agg = res.stats["settings"]["logistic"]["aggregate"]
    assert agg["pearson_bca"]["z0"] == pytest.approx(-1.0, abs=0.1)
    assert agg["pearson_bca"]["flags"]
    # a note naming the row, with both intervals
    note = next(w for w in res.warnings if w.startswith("Setting logistic, mean over datasets:"))
    assert "Pearson r BCa [" in note and "vs percentile [" in note and "|z0|" in note
    # 7 < FEW_MODELS: the few-models note says the intervals undercover
    assert any("only 7 models" in w and "cover" in w for w in res.warnings)
    # JSON
    data = json.loads(res.json_path.read_text())
    lg = data["settings"]["logistic"]["aggregate"]
    assert lg["pearson_ci_pct"] == pytest.approx(agg["pearson_ci_pct"])
    assert lg["pearson_bca"]["alpha"][1] < 0.5
    # console: both intervals, the BCa one starred, the footnote
    printed = capsys.readouterr().out
    pct = "[{:.3f}, {:.3f}]".format(*agg["pearson_ci_pct"])
    bca = "[{:.3f}, {:.3f}]*".format(*agg["pearson_ci"])
    assert "95% pct" in printed and pct in printed and bca in printed
    assert "* BCa correction too large to trust" in printed
    # report
    html = res.html_path.read_text()
    assert pct in html and bca in html and "mean over datasets: BCa corrections" in html
    # MLflow metrics
    metrics = tracking.search_runs("seven", stage="analysis")[0].data.metrics
    assert metrics["logistic.pearson_ci_pct_low"] == pytest.approx(agg["pearson_ci_pct"][0])
    assert metrics["logistic.pearson_ci_pct_high"] == pytest.approx(agg["pearson_ci_pct"][1])
    assert metrics["logistic.pearson_bca_z0"] == pytest.approx(agg["pearson_bca"]["z0"])
    assert metrics["logistic.pearson_bca_flagged"] == 1.0


def test_no_bca_warning_for_thirty_well_behaved_models(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    rows = []
    for i in range(30):
        for j, d in enumerate(("d1", "d2", "d3", "d4")):
            y = 0.7 * x[i] + rng.normal(0, 0.7) + 0.3 * j
            rows.append({"model": f"m{i}", "source_top1": float(stats.expit_percent(x[i])),
                         "dataset": d, "setting": "logistic",
                         "accuracy": float(stats.expit_percent(y))})
    csv = table.write_csv(pd.DataFrame(rows), tmp_path / "thirty.csv")
    res = run_analysis(AnalysisConfig(study="thirty", n_resamples=2000, out_dir=str(tmp_path)),
                       from_csv=csv, log=False)
    assert not any("BCa corrections" in w for w in res.warnings), res.warnings
    assert not any("only 30 models" in w for w in res.warnings)


# --------------------------------------------------------------------------- convergence speed-up

# Scratch reaches its final 60% at step 100 in every cell; fine-tuning of models a-d gets there
# at steps 40, 50, 60, 80 (speed-ups 2.5, 2, 1.67, 1.25); e-g never do in 100 steps.
SCRATCH_CURVE = [(0, 10.0), (100, 60.0)]
FT_STEP = {"a": 40, "b": 50, "c": 60, "d": 80}


def _ft_curve(model: str) -> list[tuple[int, float]]:
    if model in FT_STEP:
        return [(0, 10.0), (FT_STEP[model], 60.0), (100, 61.0)]
    return [(0, 10.0), (100, 55.0)]


def _fvs_table(models: str) -> pd.DataFrame:
    rows = []
    for m in models:
        for setting, acc in (("finetune", 61.0 if m in FT_STEP else 55.0), ("scratch", 60.0)):
            rows.append({"model": m, "source_top1": 70.0, "dataset": "d1", "setting": setting,
                         "accuracy": acc, "run_id": f"{setting}-{m}"})
    return pd.DataFrame(rows)


@pytest.fixture
def fake_curves(monkeypatch):
    def history(run_id, name):
        setting, model = run_id.split("-")
        return SCRATCH_CURVE if setting == "scratch" else _ft_curve(model)

    monkeypatch.setattr(tracking, "metric_history", history)


@pytest.mark.parametrize("models, median, below, reached", [
    ("abcdefg", 1.25, None, 4),  # 4 of 7: the 4th largest of seven, never-reached ones lowest
    ("abcd", np.median([2.5, 2.0, 100 / 60, 1.25]), None, 4),  # all reached
    # 2 of 4: the median is only bounded, by the median of (2.5, 2, 1, 1) with each
    # never-reached cell at its bound 100 / 100 = 1
    ("abef", None, 1.5, 2),
    ("efg", None, 1.0, 0),  # none reached
])
def test_median_speedup_counts_cells_that_never_reach(fake_curves, models, median, below,
                                                      reached):
    from suite.analysis import _Notes, analyse_finetune_vs_scratch, headline_metrics

    fvs = analyse_finetune_vs_scratch(_fvs_table(models), _Notes())
    v = fvs["per_dataset"]["d1"]
    assert v["median_speedup"] == (None if median is None else pytest.approx(median))
    assert v["speedup_cells"] == len(models) and v["speedup_reached"] == reached
    assert v["median_speedup_below"] == (None if below is None else pytest.approx(below))
    m = headline_metrics({"settings": {}, "finetune_vs_scratch": fvs})
    assert m["finetune_vs_scratch.d1.speedup_cells"] == len(models)
    assert m["finetune_vs_scratch.d1.speedup_reached"] == reached
    assert ("finetune_vs_scratch.d1.median_speedup" in m) == (median is not None)
    assert ("finetune_vs_scratch.d1.median_speedup_below" in m) == (below is not None)


def test_speedup_text():
    from suite.analysis.report import speedup_text

    base = {"speedup_cells": 7, "speedup_reached": 3, "speedup_infinite": 0,
            "median_speedup": None, "median_speedup_below": 0.8}
    assert speedup_text(base) == "< 0.80× (3 of 7 reached scratch's final accuracy)"
    assert speedup_text({**base, "speedup_reached": 5, "median_speedup": 1.42,
                         "median_speedup_below": None}) == \
        "1.42× (5 of 7 reached scratch's final accuracy)"
    assert speedup_text({**base, "speedup_reached": 7, "speedup_infinite": 4,
                         "median_speedup": "inf", "median_speedup_below": None}) == \
        "∞× (7 of 7 reached scratch's final accuracy, 4 at fine-tuning's first evaluation)"
    assert speedup_text({"speedup_cells": 0}) == "–"
