"""The paper presets end to end, offline: the preset file, torchvision checkpoints taken from the
torch hub cache (random weights written under the exact file names torchvision looks for), the
paper datasets read from fakes of their real layouts, all three settings, and the analysis.

Only the compute knobs are shrunk (three of the preset's five architectures, one learning rate,
two steps, a batch of four, CPU); everything else is the preset as shipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from fakes import fake_cifar, fake_dtd, fake_flowers, fake_pets

from suite import tracking
from suite.cli import main
from suite.config import GridOptions, load_study, replace, study_to_yaml
from suite.models import resolve_weights

ARCHS = ("googlenet", "resnet50", "mobilenet_v2")  # Inception v1, ResNet-50, MobileNet v2


def _cache_random_weights(cfg) -> dict[str, str]:
    """Write a random-weight checkpoint for each model where torchvision's cache looks."""
    out = {}
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for m in cfg.models:
        w = resolve_weights(m.arch, m.weights)
        path = ckpt_dir / os.path.basename(w.url)
        quiet = {"init_weights": False} if m.arch in ("googlenet", "inception_v3") else {}
        model = torchvision.models.get_model(m.arch, weights=None, **quiet)  # torchvision's layout
        torch.save(model.state_dict(), path)
        out[m.name] = str(w)
    return out


@pytest.mark.slow
def test_paper_lite_runs_end_to_end(store, tmp_path, monkeypatch, capsys):
    import torchvision.models._api as tv_api
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    real_load = tv_api.load_state_dict_from_url

    def cache_only(url, *a, **k):  # the real loader, but a cache miss fails like offline
        if not (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).exists():
            raise urllib.error.URLError("offline")
        return real_load(url, *a, **k)

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", cache_only)

    preset = load_study("paper-lite")
    assert [m.arch for m in preset.models] == ["googlenet", "resnet50", "resnet101",
                                               "densenet121", "mobilenet_v2"]
    assert preset.datasets == ("cifar10", "dtd", "oxford_pets", "flowers102")
    data = tmp_path / "data"
    fake_cifar(data)
    fake_dtd(data)
    fake_pets(data)
    fake_flowers(data, labels=(1, 2) * 5)
    small = GridOptions(lrs=preset.finetune.lrs[-1:], weight_decays=preset.finetune.weight_decays,
                        steps=2, batch_size=4, eval_every=1)
    cfg = replace(preset, models=tuple(m for m in preset.models
                                       if m.arch in ARCHS),
                  finetune=small, scratch=small, device="cpu", num_workers=0, n_resamples=200)
    weights = _cache_random_weights(cfg)
    path = tmp_path / "paper-lite-small.yaml"
    path.write_text(study_to_yaml(cfg))

    ws = str(store.workspace)
    assert main(["-w", ws, "study", "run", str(path), "--data-root", str(data)]) == 0
    out = capsys.readouterr()
    assert "Pearson" in out.out

    runs = {stage: tracking.search_runs("paper-lite", stage=stage)
            for stage in ("probe", "finetune", "analysis")}
    assert len(runs["probe"]) == 3 * 4
    assert {r.data.tags["suite.dataset"] for r in runs["probe"]} == set(preset.datasets)
    assert len(runs["finetune"]) == 3 * 4 * 2  # finetune + scratch parents
    assert {r.data.tags["suite.setting"] for r in runs["finetune"]} == {"finetune", "scratch"}
    assert len(runs["analysis"]) == 1
    for r in runs["probe"]:
        assert 0 <= r.data.metrics["test_accuracy"] <= 100
        assert r.data.metrics["feature_dim"] in (1024.0, 2048.0, 1280.0)

    versions = {mv.tags["architecture"]: mv for mv in tracking.study_versions("paper-lite")}
    assert set(versions) == set(ARCHS)
    g = versions["googlenet"].tags
    assert g["weights"] == weights["inception-v1"] == "GoogLeNet_Weights.IMAGENET1K_V1"
    assert float(g["source_top1"]) == pytest.approx(69.778)  # from the weights' meta
    assert g["source_dataset"] == "imagenet" and "crop 224" in g["preprocessing"]
    m = versions["mobilenet_v2"].tags
    assert m["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert float(m["source_top1"]) == pytest.approx(71.878)
