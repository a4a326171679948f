"""The tidy table: from a (fake) MLflow study, CSV round trip, bad-input checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from suite import tracking
from suite.analysis import table
from suite.errors import SuiteError

STUDY = "tbl"
DATASETS = ("d1", "d2")
BASE = {"architecture": "cnn", "width": 16, "depth": 1, "bn_scale": True,
        "label_smoothing": 0.0, "dropout": 0.0, "aux_head": False}
# name -> (source top-1, design changes from BASE)
MODELS = {
    "base": (70.0, {}),
    # one choice differs from base -> a pair, though it was pretrained as an MLflow Project (its
    # run's params also hold the entry point's unprefixed ones: name, bn_scale, epochs)
    "nobn": (69.5, {"bn_scale": False}),
    "ls": (70.5, {"label_smoothing": 0.1}),  # one choice differs from base -> a pair
    "wide": (75.0, {"width": 32}),  # width is not a training choice -> no pair
    "deep": (72.0, {"depth": 2}),  # nor is depth
    # same tags as nobn but pretrained for fewer epochs (pretrain run params) -> no pair
    "short": (60.0, {"bn_scale": False}),
    # base's architecture and choices, 2 epochs: a second baseline copy of the architecture
    "under": (50.0, {}),
}
PROJECT = {"nobn"}  # pretrained through the MLflow Project launcher
EPOCHS = {"short": 1, "under": 2}  # the others: 4
# Scratch trains an architecture: one accuracy per (width, depth), whichever model ran it.
SCRATCH_ACC = {(16, 1): 40.0, (32, 1): 45.0, (16, 2): 42.0}


def _design(model: str) -> dict:
    return {**BASE, **MODELS[model][1]}


def _acc(model: str, dataset: str, setting: str) -> float:
    if setting == "scratch":
        d = _design(model)
        return SCRATCH_ACC[(d["width"], d["depth"])] - 10 * DATASETS.index(dataset)
    src = MODELS[model][0]
    return round(src - 10 * DATASETS.index(dataset) - {"logistic": 5, "finetune": 0}[setting], 3)


def _curve(setting: str) -> list[tuple[int, float]]:
    # fine-tuning reaches scratch's final 60% at step 50, scratch at step 200: speed-up 4
    if setting == "finetune":
        return [(0, 10.0), (50, 60.0), (100, 70.0), (200, 72.0)]
    return [(0, 10.0), (100, 40.0), (200, 60.0)]


def _log_study() -> None:
    import mlflow

    runs = {}
    for epochs, project in ((4, False), (4, True), (1, False), (2, False)):
        with tracking.start_run(STUDY, "pretrain", tracking.run_tags(STUDY, "pretrain")) as run:
            params = {"model.epochs": epochs, "lr": 0.1, "model.name": f"e{epochs}",
                      "model.bn_scale": not project}
            if project:  # what mlflow.projects.run logs for the entry point, before the stage
                params.update(name="nobn", epochs=str(epochs), bn_scale="false", lr="0.1",
                              skip_corrupt_flag="--no-skip-corrupt")
            mlflow.log_params(params)
            for name in MODELS:
                mlflow.log_text("weights", f"{name}/model/weights.txt")
        runs[epochs, project] = run
    for name, (src, changes) in MODELS.items():
        run = runs[EPOCHS.get(name, 4), name in PROJECT]
        tags = {**BASE, **changes, "source_top1": src, tracking.TAG_STUDY: STUDY,
                "source_dataset": "synth-source", "run_id": run.info.run_id}
        tracking.register_version(run.info.run_id, "", tracking.registered_name(STUDY, name),
                                  tags, model_uri=f"{run.info.artifact_uri}/{name}/model")
    for name in MODELS:
        reg = tracking.registered_name(STUDY, name)
        for d in DATASETS:
            tags = tracking.run_tags(STUDY, "probe", model=reg, model_version="1", dataset=d,
                                     setting="logistic")
            with tracking.start_run(STUDY, f"probe-{name}-{d}", tags):
                mlflow.log_metric("test_accuracy", _acc(name, d, "logistic"))
        for setting in ("finetune", "scratch") if name != "short" else ():
            tags = tracking.run_tags(STUDY, "finetune", model=reg, model_version="1",
                                     dataset="d1", setting=setting)
            with tracking.start_run(STUDY, f"{setting}-{name}", tags):
                mlflow.log_metric("test_accuracy", _acc(name, "d1", setting))
                tracking.log_curve("curve_test_accuracy", _curve(setting))
                if name == "base":  # a grid point (nested child run) is not a result
                    child = tracking.run_tags(STUDY, "finetune-point", model=reg, dataset="d1",
                                              setting=setting)
                    with tracking.start_run(STUDY, "point", child, nested=True):
                        mlflow.log_metric("test_accuracy", 1.0)
    # A failed run must be ignored.
    tags = tracking.run_tags(STUDY, "probe", model=tracking.registered_name(STUDY, "base"),
                             model_version="1", dataset="d1", setting="logistic")
    with pytest.raises(RuntimeError), tracking.start_run(STUDY, "failed", tags):
        mlflow.log_metric("test_accuracy", 0.0)
        raise RuntimeError("boom")


@pytest.fixture(scope="module")
def study_store(tmp_path_factory, fresh_store):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", "unset")
        mp.delenv("MLFLOW_TRACKING_URI")
        mp.setenv("SUITE_WORKSPACE", "unset")
        mp.delenv("SUITE_WORKSPACE")
        root = tmp_path_factory.mktemp("study")
        fresh_store(root)
        _log_study()
        yield root
        tracking._CURRENT = None


def test_table_from_mlflow(study_store):
    df, notes = table.load_study_table(STUDY)
    # The scratch runs of base, nobn, ls and under train one network: one point, under base.
    assert len(notes) == 1 and "3 scratch run(s)" in notes[0]
    n_trained = len(MODELS) - 1  # "short" has no fine-tune runs
    assert len(df) == len(MODELS) * len(DATASETS) + n_trained + len(SCRATCH_ACC)
    recipes = df.groupby("model")["recipe"].first()
    assert recipes["short"] != recipes["base"] == recipes["nobn"] == recipes["wide"]
    assert recipes["under"] != recipes["base"]
    assert set(df["model"]) == set(MODELS)  # study prefix stripped
    # One scratch point per architecture, at its baseline's (highest) source accuracy.
    assert sorted(df.loc[df["setting"] == "scratch", "model"]) == ["base", "deep", "wide"]
    for _, row in df.iterrows():
        assert row["accuracy"] == _acc(row["model"], row["dataset"], row["setting"])
        assert row["source_top1"] == MODELS[row["model"]][0]
        expect = _design(row["model"])
        for k in table.DESIGN:
            assert row[k] == expect[k], k
        assert row["version"] == "1" and isinstance(row["run_id"], str)
    assert df["bn_scale"].map(type).eq(bool).all()


def test_csv_round_trip_of_a_study(study_store, tmp_path):
    df, _ = table.load_study_table(STUDY)
    path = table.write_csv(df, tmp_path / "t.csv")
    assert path.read_text().splitlines()[0].startswith("model,source_top1,dataset,setting,accuracy")
    back = table.read_csv(path)
    pd.testing.assert_frame_equal(back.reset_index(drop=True), df.reset_index(drop=True),
                                  check_dtype=False)


def test_run_analysis_on_a_study(study_store, tmp_path):
    from suite.analysis import run_analysis
    from suite.config import AnalysisConfig

    out = tmp_path / "rep"
    csv = tmp_path / "export.csv"
    res = run_analysis(AnalysisConfig(study=STUDY, n_resamples=200, out_dir=str(out)),
                       to_csv=csv)
    assert table.read_csv(csv)["accuracy"].tolist() == \
        table.load_study_table(STUDY)[0]["accuracy"].tolist()
    s = res.stats
    assert list(s["settings"]) == ["logistic", "finetune", "scratch"]
    fvs = s["finetune_vs_scratch"]
    # Every fine-tuned model against its network's one scratch row: base, wide and deep gain
    # 30 points, nobn 29.5 and ls 30.5 over base's network, under (base's network, 50%) 10.
    assert fvs["per_dataset"]["d1"]["n_models"] == 6
    assert fvs["per_dataset"]["d1"]["mean_diff"] == pytest.approx(160.0 / 6)
    assert fvs["per_dataset"]["d1"]["median_speedup"] == pytest.approx(4.0)
    assert "curves" in res.figures and "choices" in res.figures
    pairs = {(c["baseline"], c["variant"], c["choice"]) for c in s["choices"]}
    assert pairs == {("base", "nobn", "bn_scale"), ("base", "ls", "label_smoothing")}
    nobn = next(c for c in s["choices"] if c["variant"] == "nobn")
    assert nobn["delta_source_top1"] == pytest.approx(-0.5)
    assert nobn["settings"]["logistic"]["n_datasets"] == 2
    # A pretraining choice leaves the scratch network unchanged: no scratch comparison.
    assert set(nobn["settings"]) == {"logistic", "finetune"}
    assert s["settings"]["scratch"]["models"] == ["base", "deep", "wide"]
    data = json.loads(res.json_path.read_text())
    assert data["settings"]["logistic"]["aggregate"]["n_models"] == len(MODELS)


# --------------------------------------------------------------------------- CSV and checks


def _csv(tmp_path, text: str):
    p = tmp_path / "r.csv"
    p.write_text(text)
    return p


def test_csv_wrong_columns_names_expected_header(tmp_path):
    p = _csv(tmp_path, "model,top1,dataset,setting,acc\na,70,d,logistic,50\n")
    with pytest.raises(SuiteError) as e:
        table.read_csv(p)
    msg = str(e.value)
    assert "model,source_top1,dataset,setting,accuracy" in msg
    assert "missing source_top1, accuracy" in msg and "unexpected top1, acc" in msg


def test_csv_non_numeric_accuracy(tmp_path):
    p = _csv(tmp_path, "model,source_top1,dataset,setting,accuracy\na,70,d,logistic,high\n")
    with pytest.raises(SuiteError, match="accuracy"):
        table.read_csv(p)


def test_csv_missing_file(tmp_path):
    with pytest.raises(SuiteError, match="does not exist"):
        table.read_csv(tmp_path / "nope.csv")


def test_csv_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"model": ["a", "b", "c"], "source_top1": rng.uniform(0, 100, 3),
                       "dataset": ["x"] * 3, "setting": ["logistic", "finetune", "my-probe"],
                       "accuracy": rng.uniform(0, 100, 3)})
    back = table.read_csv(table.write_csv(df, tmp_path / "r.csv"))
    pd.testing.assert_frame_equal(back, df)


def test_clean_reports_bad_rows(tmp_path):
    p = _csv(tmp_path, "\n".join([
        "model,source_top1,dataset,setting,accuracy",
        "a,70,d1,logistic,50", "a,70,d1,logistic,51",  # duplicate cell
        "b,72,d1,logistic,101",  # out of range
        "c,-3,d1,logistic,40",  # bad source accuracy
        "d,74,d1,logistic,",  # missing
        "e,75,d1,finetune,60",
    ]) + "\n")
    df, notes = table.clean(table.read_csv(p), settings=["logistic", "scratch"])
    assert df["model"].tolist() == ["a"] and df["accuracy"].tolist() == [50.0]
    text = " ".join(notes)
    assert "scratch requested but not in the results" in text
    assert "transfer accuracy missing or outside [0, 100]" in text
    assert "source accuracy missing or outside [0, 100]" in text
    assert "1 duplicate row(s)" in text


def test_matrix_marks_missing_cells():
    df = pd.DataFrame({"model": ["a", "a", "b"], "source_top1": [60.0, 60.0, 50.0],
                       "dataset": ["x", "y", "x"], "setting": "logistic",
                       "accuracy": [1.0, 2.0, 3.0]})
    models, datasets, src, acc = table.matrix(df, "logistic")
    assert models == ["b", "a"] and datasets == ["x", "y"]
    np.testing.assert_array_equal(src, [50.0, 60.0])
    np.testing.assert_array_equal(acc, [[3.0, np.nan], [1.0, 2.0]])


def test_choice_study_leaves_scratch_out_even_with_per_model_scratch_rows():
    """A table (an older study's CSV) may hold a scratch row per model; the training choices
    only change pretraining, so scratch is never one of their comparisons."""
    from suite.analysis import _Notes, analyse_choices
    from suite.config import AnalysisConfig

    rows = []
    for model, bn in (("base", True), ("nobn", False)):
        for setting in ("logistic", "finetune", "scratch"):
            for d in DATASETS:
                rows.append({"model": model, "source_top1": 70.0, "dataset": d,
                             "setting": setting, "accuracy": 50.0 + (5.0 if bn else 0.0),
                             **BASE, "bn_scale": bn, "recipe": "r"})
    df = pd.DataFrame(rows)
    (item,) = analyse_choices(df, ["logistic", "finetune", "scratch"],
                              AnalysisConfig(n_resamples=100), _Notes())
    assert (item["baseline"], item["variant"], item["choice"]) == ("base", "nobn", "bn_scale")
    assert set(item["settings"]) == {"logistic", "finetune"}


def test_finetune_vs_scratch_pairs_every_variant_with_its_networks_scratch_row():
    """One scratch row per architecture (under its representative): every fine-tuned model of
    that architecture is compared with it, not only the representative."""
    from suite.analysis import _Notes, analyse_finetune_vs_scratch

    rows = [("w16", "net16", "finetune", 40.0), ("w16-ls", "net16", "finetune", 38.0),
            ("w16-short", "net16", "finetune", 30.0), ("w16", "net16", "scratch", 35.0),
            ("w24", "net24", "finetune", 50.0), ("w24", "net24", "scratch", 45.0)]
    df = pd.DataFrame([{"model": m, "scratch_network": n, "setting": s, "accuracy": a,
                        "dataset": "d", "source_top1": 10.0} for m, n, s, a in rows])
    res = analyse_finetune_vs_scratch(df, _Notes())
    diffs = {c["model"]: c["diff"] for c in res["cells"]}
    assert diffs == {"w16": 5.0, "w16-ls": 3.0, "w16-short": -5.0, "w24": 5.0}
    assert res["per_dataset"]["d"]["n_models"] == 4
    # without the column (CSV input) only same-named rows pair
    res = analyse_finetune_vs_scratch(df.drop(columns="scratch_network"), _Notes())
    assert {c["model"] for c in res["cells"]} == {"w16", "w24"}
