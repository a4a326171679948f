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
    assert len(parents) == 12
    assert {r.data.tags["suite.setting"] for r in parents} == {"finetune", "scratch"}
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
    assert "0 cells run, 21 reused" in capsys.readouterr().err
    assert len(tracking.study_versions("e2e")) == 3
    assert len(_runs("finetune")) == 12


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
    assert main(["-w", ws, "finetune", "proj-p", "synth-shapes", "--study", "proj",
                 "--lrs", "0.05", "--steps", "4", "--eval-every", "2", "--setting",
                 "scratch", "--skip-corrupt"]) == 0
    parents = tracking.search_runs("proj", stage="finetune")
    assert len(parents) == 1 and parents[0].data.tags["suite.setting"] == "scratch"
    assert parents[0].data.params["skip_corrupt"] == "True"  # the flag crossed the MLproject
    assert "test_accuracy" in parents[0].data.metrics
