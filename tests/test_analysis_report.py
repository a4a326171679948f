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
