"""The predictor comparison of the analysis (suite.analysis.predictors): the vectorised weighted
tau against SciPy's, and --from-csv with estimator columns (ranking, constant predictor, few
models, missing scores, bad columns)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from suite.analysis import predictors
from suite.analysis.table import predictor_columns, read_csv
from suite.config import AnalysisConfig
from suite.errors import SuiteError


@pytest.mark.parametrize("seed", range(6))
def test_weighted_tau_matches_scipy(seed):
    g = np.random.default_rng(seed)
    m = int(g.integers(3, 17))
    x = g.normal(size=m)
    y = 0.5 * x + g.normal(size=m)
    if seed % 2:  # ties, as bootstrap resamples have them
        idx = g.integers(0, m, m)
        x, y = x[idx], y[idx]
        x[: m // 3] = x[0]
    ours = predictors.weighted_tau(x[None], y[None])[0]
    np.testing.assert_allclose(ours, sps.weightedtau(x, y).statistic, rtol=1e-12, atol=1e-14)


def _table(n_models=6, datasets=("a", "b", "c"), seed=0):
    g = np.random.default_rng(seed)
    rows = []
    quality = np.linspace(0, 1, n_models)
    for i in range(n_models):
        for d in datasets:
            acc = 50 + 40 * quality[i] + g.normal(0, 3)
            rows.append({"model": f"m{i}", "source_top1": 60 + 10 * g.random(),
                         "dataset": d, "setting": "logistic", "accuracy": acc,
                         "good": quality[i] + g.normal(0, 0.05),  # an estimator that works
                         "flat": 1.0})  # a constant one
    return pd.DataFrame(rows)


def _run(tmp_path, df):
    from suite.analysis import run_analysis

    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    cfg = AnalysisConfig(study="csv", n_resamples=200, out_dir=str(tmp_path / "out"))
    res = run_analysis(cfg, from_csv=path, log=False)
    return res, json.loads((tmp_path / "out" / "analysis.json").read_text())


def test_from_csv_ranks_predictors(tmp_path):
    res, js = _run(tmp_path, _table())
    pr = js["settings"]["logistic"]["predictors"]
    for d in ("a", "b", "c"):
        for p in ("source_top1", "good", "flat"):
            assert set(pr["per_dataset"][d][p]) >= {"tau_w", "kendall", "spearman", "pearson",
                                                    "tau_w_ci"}
        assert pr["per_dataset"][d]["good"]["tau_w"] > 0.7
        assert pr["per_dataset"][d]["flat"]["tau_w"] is None  # constant: NaN, reported
    assert pr["ranking"][0] == "good" and "flat" not in pr["ranking"]
    assert set(pr["mean_tau_w"]) == {"source_top1", "good", "flat"}
    vs = pr["vs_source_top1"]["good"]
    assert vs["diff"] > 0 and vs["p_value"] < 0.05
    assert any("flat is constant" in w for w in res.warnings)
    assert (tmp_path / "out" / "figures" / "predictors.png").is_file()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Which predictor ranks the models best?" in html


def test_from_csv_two_models_still_reported(tmp_path):
    df = _table(n_models=2)
    res, js = _run(tmp_path, df)
    pr = js["settings"]["logistic"]["predictors"]
    assert pr["per_dataset"]["a"]["good"]["tau_w"] is not None
    assert any("only 2 model" in w for w in res.warnings)


def test_missing_scores_use_the_other_models(tmp_path):
    df = _table()
    df.loc[(df["model"] == "m0"), "good"] = np.nan
    res, js = _run(tmp_path, df)
    assert js["settings"]["logistic"]["predictors"]["per_dataset"]["a"]["good"]["n_models"] == 5
    assert any("no good for m0" in w for w in res.warnings)


def test_csv_predictor_columns_and_bad_columns(tmp_path):
    df = _table()
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    assert predictor_columns(read_csv(path)) == ["good", "flat"]
    df["notes"] = "x"
    df.to_csv(path, index=False)
    with pytest.raises(SuiteError, match="unexpected notes"):
        read_csv(path)
