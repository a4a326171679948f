"""suite.pretrain: a tiny source task trains, registers one tagged version, and resumes."""

from __future__ import annotations

import mlflow
import pytest
import torch

import suite.data
from suite import tracking
from suite.config import ModelConfig, PretrainConfig
from suite.data import DatasetInfo, TensorImageDataset
from suite.errors import SuiteError
from suite.pretrain import (
    pretrain_cell,
    pretrain_recipe,
    recipe_of_params,
    run_pretrain,
)

K = 4  # classes of the tiny source task
PER_CLASS = {"train": 16, "val": 6, "test": 6}
TINY = DatasetInfo(name="tiny-source", num_classes=K, metric="top1", has_val=True,
                   kind="synthetic", image_size=8, description="4 colour blobs, 8x8")


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_split(split: str) -> TensorImageDataset:
    """Class c = a bright patch in one quadrant on channel c % 3 (separable in one epoch)."""
    g = torch.Generator().manual_seed({"train": 1, "val": 2, "test": 3}[split])
    n = PER_CLASS[split] * K
    y = torch.arange(n) % K
    x = 0.3 * torch.randn(n, 3, 8, 8, generator=g)
    for c in range(K):
        r, q = divmod(c, 2)
        x[y == c, c % 3, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 2.0
    return TensorImageDataset(x, y)


@pytest.fixture
def tiny_source(monkeypatch):
    real_info, real_load = suite.data.get_info, suite.data.load_split

    def get_info(name, root=""):
        return TINY if name == TINY.name else real_info(name, root)

    def load_split(name, split, **kw):
        return _tiny_split(split) if name == TINY.name else real_load(name, split, **kw)

    monkeypatch.setattr(suite.data, "get_info", get_info)
    monkeypatch.setattr(suite.data, "load_split", load_split)
    return TINY.name


def _cfg(**kw) -> PretrainConfig:
    model = ModelConfig(name="tiny", width=4, epochs=1, label_smoothing=0.1, dropout=0.1,
                        aux_head=True)
    base = {"model": model, "source": "tiny-source", "batch_size": 16, "study": "t",
            "device": "cpu"}
    base.update(kw)
    return PretrainConfig(**base)


def test_pretrain_registers_a_tagged_version_and_reuses_it(store, tiny_source):
    cfg = _cfg()
    res = run_pretrain(cfg)
    assert not res.reused and res.registered_name == "t-tiny" and res.version == "1"
    assert 0.0 <= res.source_top1 <= 100.0

    mv = tracking.get_version("t-tiny", "1")
    expected = {"architecture": "cnn", "width": "4", "depth": "1", "bn_scale": "True",
                "label_smoothing": "0.1", "dropout": "0.1", "aux_head": "True",
                "num_classes": str(K), "image_size": "8", "source_dataset": "tiny-source",
                # a synthetic source is fed as generated: normalised with synthetic.MEAN/STD
                "input_mean": "0.406,0.413,0.407", "input_std": "0.149,0.158,0.154",
                "recipe": pretrain_recipe(cfg),
                "suite.study": "t", "suite.cell": pretrain_cell(cfg), "run_id": res.run_id}
    assert {k: mv.tags.get(k) for k in expected} == expected
    assert float(mv.tags["source_top1"]) == pytest.approx(res.source_top1, abs=1e-3)
    assert mv.run_id == res.run_id

    run = tracking.client().get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["suite.stage"] == "pretrain" and run.data.tags["suite.model"] == "t-tiny"
    assert run.data.params["model.width"] == "4" and run.data.params["source"] == "tiny-source"
    for name in ("train_loss", "val_accuracy", "source_top1"):
        assert [s for s, _ in tracking.metric_history(res.run_id, name)] == [1]
    assert run.data.metrics["source_top1"] == pytest.approx(res.source_top1)

    # The registered network reproduces the logged source top-1 on the test split.
    from suite.models import model_from_version
    from suite.train import eval_loader, evaluate

    model = model_from_version(mv)
    top1 = evaluate(model, eval_loader(_tiny_split("test")), "top1", torch.device("cpu"))
    assert top1 == pytest.approx(res.source_top1)

    again = run_pretrain(cfg)
    assert again.reused and again.version == "1" and again.run_id == res.run_id
    assert again.source_top1 == pytest.approx(res.source_top1, abs=1e-3)
    assert len(tracking.client().search_model_versions("name = 't-tiny'")) == 1
    # device / workers / data root do not change the cell; a training choice does.
    assert run_pretrain(_cfg(num_workers=2, data_root="/elsewhere")).reused
    other = run_pretrain(_cfg(seed=1))
    assert not other.reused and other.version == "2"


def test_pretrain_is_deterministic(store, tiny_source):
    a = run_pretrain(_cfg(registered_name="a"))
    b = run_pretrain(_cfg(registered_name="b"))
    ha = tracking.metric_history(a.run_id, "train_loss")
    hb = tracking.metric_history(b.run_id, "train_loss")
    assert ha == hb and a.source_top1 == b.source_top1


def test_failed_registration_leaves_a_failed_run_and_no_version(store, tiny_source, monkeypatch):
    import suite.models

    real = suite.models.log_and_register_model
    calls = []

    def fail_once(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("artifact store down")
        return real(*a, **k)

    monkeypatch.setattr(suite.models, "log_and_register_model", fail_once)
    with pytest.raises(RuntimeError, match="artifact store down"):
        run_pretrain(_cfg())
    runs = mlflow.search_runs([tracking.experiment_id("t")], output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert tracking.client().search_model_versions("name = 't-tiny'") == []
    res = run_pretrain(_cfg())  # the re-run trains again and registers exactly once
    assert not res.reused and res.version == "1"
    assert tracking.client().get_run(res.run_id).info.status == "FINISHED"


def test_bad_model_config_is_a_user_error(store, tiny_source):
    with pytest.raises(SuiteError, match="epochs"):
        run_pretrain(_cfg(model=ModelConfig(name="x", width=4, epochs=0)))


def test_inside_an_mlflow_project_the_launched_run_is_used(store, tiny_source, monkeypatch):
    launched = tracking.client().create_run(tracking.experiment_id("t")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    res = run_pretrain(_cfg())
    assert res.run_id == launched
    assert tracking.get_version("t-tiny", res.version).tags["run_id"] == launched
    assert tracking.client().get_run(launched).info.status == "FINISHED"


def test_recipe_is_the_config_without_choices_names_and_resources():
    """Two models that differ only in training choices (and names, places, resources) share a
    recipe; epochs or lr make another. The recipe of a run's params is the same whether the
    stage ran in-process (flatten(cfg)) or as an MLflow Project (which also logs the entry
    point's unprefixed parameters: name, bn_scale, epochs, ...)."""
    from suite.config import flatten, replace
    from suite.launch import _param, pretrain_params

    cfg = _cfg()
    variant = _cfg(model=replace(cfg.model, name="other", bn_scale=False, dropout=0.5),
                   registered_name="x", device="cuda", num_workers=3, data_root="/d",
                   skip_corrupt=True, study="s2")
    assert pretrain_recipe(cfg) == pretrain_recipe(variant)
    assert pretrain_recipe(cfg) != pretrain_recipe(_cfg(model=replace(cfg.model, epochs=2)))
    assert pretrain_recipe(cfg) != pretrain_recipe(_cfg(lr=0.05))

    for c in (cfg, variant):
        inprocess = flatten(c)
        project = {**{k: _param(v) for k, v in pretrain_params(c).items()}, **inprocess}
        assert set(project) - set(inprocess) >= {"name", "bn_scale", "epochs", "arch"}
        assert recipe_of_params(inprocess) == recipe_of_params(project) == pretrain_recipe(cfg)
