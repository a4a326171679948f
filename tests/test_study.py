"""End to end: a tiny study through the CLI against a temporary store; resume; projects."""

from __future__ import annotations

import pytest

from suite import tracking
from suite.cli import main

STUDY = """
name: e2e
source: synth-source
models:
  - {name: a, width: 4, depth: 1, epochs: 1}
  - {name: b, width: 6, depth: 1, epochs: 1}
  - {name: c, width: 4, depth: 1, epochs: 1, bn_scale: false}
datasets: [synth-shapes, synth-shift]
settings: [logistic, finetune, scratch]
finetune: {lrs: [0.05], weight_decays: [0.0001], steps: 8, batch_size: 32, eval_every: 4}
scratch:  {lrs: [0.1], weight_decays: [0.0001], steps: 8, batch_size: 32, eval_every: 4}
n_resamples: 100
"""


def _runs(stage):
    return tracking.search_runs("e2e", stage=stage)


@pytest.mark.slow
def test_study_runs_end_to_end_and_resumes(store, tmp_path, capsys, monkeypatch):
    path = tmp_path / "e2e.yaml"
    path.write_text(STUDY)
    ws = str(store.workspace)

    # A study killed in its fine-tuning stage keeps every completed cell ...
    import suite.finetune as ft

    real = ft._train_point
    calls = {"n": 0}

    def dies_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ft, "_train_point", dies_on_third)
    assert main(["-w", ws, "study", "run", str(path)]) == 130
    assert len(_runs("pretrain")) == 3 and len(_runs("probe")) == 6
    assert len(_runs("finetune")) == 2  # two cells finished before the kill
    monkeypatch.setattr(ft, "_train_point", real)

    # ... and the re-run completes only what is missing, then analyses.
    assert main(["-w", ws, "study", "run", str(path)]) == 0
    out = capsys.readouterr()
    assert "Pearson" in out.out and "suite --workspace" in out.err
    assert len(_runs("pretrain")) == 3
    assert len(_runs("probe")) == 6
    parents = _runs("finetune")
    # 3 models x 2 datasets fine-tuned; scratch once per architecture: a and c share one.
    assert len(parents) == 6 + 4
    assert {r.data.tags["suite.setting"] for r in parents} == {"finetune", "scratch"}
    scratch = [r for r in parents if r.data.tags["suite.setting"] == "scratch"]
    assert {r.data.tags["suite.model"] for r in scratch} == {"e2e-a", "e2e-b"}
    assert len(_runs("analysis")) == 1
    versions = tracking.study_versions("e2e")
    assert len(versions) == 3
    for mv in versions:
        for tag in ("architecture", "source_dataset", "source_top1", "bn_scale",
                    "label_smoothing", "dropout", "aux_head"):
            assert tag in mv.tags
    curve = tracking.metric_history(parents[0].info.run_id, "curve_val_accuracy")
    assert [s for s, _ in curve] == [0, 4, 8]

    # A third run reuses everything: no new runs, no duplicate registrations.
    assert main(["-w", ws, "study", "run", str(path), "--skip-analysis"]) == 0
    # 3 pretrain + 6 probe + 6 fine-tune points and selections + 4 scratch points and selections
    assert "0 cells run, 29 reused" in capsys.readouterr().err
    assert len(tracking.study_versions("e2e")) == 3
    assert len(_runs("finetune")) == 10


def test_scratch_runs_once_per_architecture(store, monkeypatch):
    """Models that share an architecture share one scratch cell, run under the baseline with
    the highest source top-1 (not the first in the study's order); fine-tuning runs per model."""
    import suite.study as study_mod
    from fakes import register
    from suite.config import ModelConfig, Setting, StudyConfig
    from suite.models import SmallCNN

    models = (ModelConfig("w4-short", width=4, epochs=1), ModelConfig("w4", width=4),
              ModelConfig("w4-ls", width=4, label_smoothing=0.1),
              ModelConfig("w4-dropout", width=4, dropout=0.5), ModelConfig("w6", width=6))
    top1 = {"w4-short": 8.9, "w4": 27.8, "w4-ls": 25.4, "w4-dropout": 30.0, "w6": 20.0}
    cfg = StudyConfig(name="s", models=models, datasets=("synth-shapes", "synth-shift"),
                      settings=(Setting.finetune, Setting.scratch))

    def pretrain(cfg, model):
        tags = {"architecture": "cnn", "width": model.width, "depth": model.depth,
                "bn_scale": model.bn_scale, "label_smoothing": model.label_smoothing,
                "dropout": model.dropout, "aux_head": model.aux_head, "image_size": 32,
                "source_dataset": "synth-source", "source_top1": top1[model.name]}
        name = tracking.registered_name(cfg.name, model.name)
        return name, str(register(SmallCNN(4, width=model.width), name, tags, "s").version), False

    launched = []

    def finetune(fcfg, launcher):
        launched.append((fcfg.setting, fcfg.model_name, fcfg.dataset))
        return False  # run, not reused

    points = []
    monkeypatch.setattr(study_mod, "_pretrain", pretrain)
    monkeypatch.setattr(study_mod, "_finetune", finetune)
    monkeypatch.setattr(study_mod, "_point", lambda fcfg, launcher: points.append(fcfg))
    res = study_mod.run_study(cfg, analysis=False)
    scratch = [(m, d) for s, m, d in launched if s is Setting.scratch]
    assert scratch == [("s-w4", "synth-shapes"), ("s-w4", "synth-shift"),
                       ("s-w6", "synth-shapes"), ("s-w6", "synth-shift")]
    assert sum(s is Setting.finetune for s, _, _ in launched) == 5 * 2
    n_ft, n_sc = (len(g.lrs) * len(g.weight_decays) for g in (cfg.finetune, cfg.scratch))
    assert len(points) == 10 * n_ft + 4 * n_sc
    assert all(len(p.lrs) == len(p.weight_decays) == 1 for p in points)
    assert res.cells_run == 5 + 10 * (1 + n_ft) + 4 * (1 + n_sc)


@pytest.mark.slow
def test_cli_launches_mlflow_projects(store, capsys):
    ws = str(store.workspace)
    assert main(["-w", ws, "pretrain", "--study", "proj", "--name", "p", "--width", "4",
                 "--epochs", "1", "--bn-scale", "false"]) == 0
    runs = tracking.search_runs("proj", stage="pretrain")
    assert len(runs) == 1
    assert runs[0].data.tags.get("mlflow.project.entryPoint") == "main"
    mv = tracking.get_version("proj-p")
    assert mv.tags["bn_scale"] in ("False", "false")
    # The recipe tag comes from the config that ran, not from the params the launcher logged:
    # it equals the in-process config's, whose choices and names differ.
    from suite.analysis.table import _recipe
    from suite.config import ModelConfig, PretrainConfig
    from suite.pretrain import pretrain_recipe

    inprocess = PretrainConfig(model=ModelConfig(name="q", width=4, epochs=1), study="other")
    assert mv.tags["recipe"] == pretrain_recipe(inprocess)
    assert _recipe(dict(mv.tags), mv.run_id) == pretrain_recipe(inprocess)
    assert main(["-w", ws, "finetune", "proj-p", "synth-shapes", "--study", "proj",
                 "--lrs", "0.05", "--steps", "4", "--eval-every", "2", "--setting",
                 "scratch", "--skip-corrupt"]) == 0
    parents = tracking.search_runs("proj", stage="finetune")
    assert len(parents) == 1 and parents[0].data.tags["suite.setting"] == "scratch"
    assert parents[0].data.params["skip_corrupt"] == "True"  # the flag crossed the MLproject
    assert "test_accuracy" in parents[0].data.metrics
