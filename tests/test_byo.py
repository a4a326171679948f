"""Bring your own checkpoint: ``suite zoo register py:MODULE:FACTORY --weights-file F``, with a
network module written by the test into a temporary folder and a state dict saved by the test."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from suite import models, tracking
from suite.cli import main
from suite.errors import SuiteError
from suite.models import byo

pytestmark = pytest.mark.usefixtures("one_thread")

MODULE = "byo_testnets"
SOURCE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """conv -> BN -> ReLU -> global pool -> proj (the penultimate layer) -> head."""

    def __init__(self, width=8, classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(width, 2 * width)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(torch.relu(self.proj(self.body(x))))


def make(width=8):
    return TinyNet(width)


def make_with_layer(width=8):
    return TinyNet(width), "body"


def make_with_preprocessing():
    return {"model": TinyNet(4), "input_size": 32, "resize": 36, "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25], "interpolation": "bicubic"}
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The user's module ``byo_testnets`` in its own folder on sys.path (both undone after)."""
    folder = tmp_path / "user-code"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield folder
    sys.modules.pop(MODULE, None)


def _weights(tmp_path, width: int | None, factory: str = "make", seed: int = 0):
    """A trained-looking state dict of ``factory(width)`` (``factory()`` for None) saved as
    plain tensors."""
    import importlib

    torch.manual_seed(seed)
    fn = getattr(importlib.import_module(MODULE), factory)
    made = fn(width) if width is not None else fn()
    net = made[0] if isinstance(made, tuple) else made["model"] if isinstance(made, dict) \
        else made
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / f"{factory}-w{width}.pt"
    torch.save(net.state_dict(), path)
    return path, net.eval()


def test_parse_reads_factory_arguments_as_yaml_scalars():
    spec = byo.parse("py:pkg.nets:make_net?width=32&bn=false&name=abc&p=0.5")
    assert (spec.module, spec.factory) == ("pkg.nets", "make_net")
    assert spec.kwargs == {"width": 32, "bn": False, "name": "abc", "p": 0.5}
    for bad in ("py:nets", "py::make", "py:nets:not-a-name", "py:nets:make?1x=2"):
        with pytest.raises(SuiteError):
            byo.parse(bad)


def test_register_py_end_to_end(store, tmp_path, user_module, monkeypatch, capsys):
    """CLI registration, the registered version's tags, loading it back from the registry
    without the user's folder on the path, and a probe on its features."""
    weights, net = _weights(tmp_path, 6)
    ws = str(store.workspace)
    arch = f"py:{MODULE}:make?width=6"
    assert main(["-w", ws, "zoo", "register", arch, "--weights-file", str(weights),
                 "--source-top1", "61.5", "--input-size", "32", "--interpolation",
                 "bicubic"]) == 0
    assert "registered py-make v1 (source top-1 61.5%)" in capsys.readouterr().err
    mv = tracking.get_version("py-make", "1")
    t = mv.tags
    assert t["architecture"] == arch and t["factory"] == f"py:{MODULE}:make"
    assert t["source_top1"] == "61.5" and t["source_top1_origin"] == "user"
    assert (t["image_size"], t["resize_size"], t["interpolation"]) == ("32", "37", "bicubic")
    assert (t["input_mean"], t["input_std"]) == ("0.485,0.456,0.406", "0.229,0.224,0.225")
    assert (t["num_classes"], t["classifier"], t["feature_dim"]) == ("10", "head", "12")
    assert t["feature_layer"] == ""
    assert "py:byo_testnets:make" in tracking.client().get_registered_model("py-make").description

    # Registering the same file again is the same version.
    assert main(["-w", ws, "zoo", "register", arch, "--weights-file", str(weights),
                 "--source-top1", "61.5", "--input-size", "32", "--interpolation",
                 "bicubic"]) == 0
    assert len(tracking.client().search_model_versions("name = 'py-make'")) == 1

    # The registered model carries the user's module (MLflow code_paths): it loads with the
    # folder gone from sys.path and the module forgotten.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(user_module)])
    sys.modules.pop(MODULE, None)
    loaded = models.model_from_version(mv)
    assert type(loaded).__module__ == MODULE
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    transform, side = models.version_preprocessing(mv.tags)
    assert side == 32 and int(transform.resize_size[0]) == 37
    assert transform.interpolation.value == "bicubic"

    # Like any zoo model: fixed-feature transfer on a synthetic target.
    from suite.config import ProbeConfig
    from suite.probe import run_probe

    res = run_probe(ProbeConfig(model_name="py-make", dataset="synth-shapes", study="zoo",
                                device="cpu", l2_grid=(1e-3, 1e-1, 10.0), num_workers=0))
    assert 0.0 <= res.test_accuracy <= 100.0


def test_feature_layer_and_factory_preprocessing(store, tmp_path, user_module):
    weights, net = _weights(tmp_path, 4, "make_with_layer")
    from suite.models.zoo import register_zoo

    # The factory names its penultimate layer: features are body's output, (N, width).
    mv = register_zoo(f"py:{MODULE}:make_with_layer?width=4", weights_file=weights,
                      source_top1=50.0, study="zoo", input_size=32)
    assert mv.tags["feature_layer"] == "body" and mv.tags["feature_dim"] == "4"
    x = torch.randn(5, 3, 32, 32)
    fe = models.feature_extractor(models.model_from_version(mv))
    with torch.no_grad():
        assert torch.allclose(fe(x), net.body(x), atol=1e-6)

    # --feature-layer wins over the factory's choice.
    mv2 = register_zoo(f"py:{MODULE}:make_with_layer?width=4", weights_file=weights,
                       source_top1=50.0, study="zoo", input_size=32, feature_layer="proj",
                       registered_name="py-proj")
    assert mv2.tags["feature_layer"] == "proj" and mv2.tags["feature_dim"] == "8"

    # Preprocessing from the factory; an explicit option still wins.
    w3, _ = _weights(tmp_path, None, "make_with_preprocessing")
    mv3 = register_zoo(f"py:{MODULE}:make_with_preprocessing", weights_file=w3,
                       source_top1=40.0, study="zoo", std="0.2,0.2,0.2")
    t = mv3.tags
    assert (t["image_size"], t["resize_size"], t["interpolation"]) == ("32", "36", "bicubic")
    assert (t["input_mean"], t["input_std"]) == ("0.5,0.5,0.5", "0.2,0.2,0.2")
    assert models.input_normalisation(t) == ((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))

    with pytest.raises(SuiteError, match="has no layer 'prj'.*Did you mean proj"):
        register_zoo(f"py:{MODULE}:make", weights_file=weights, source_top1=50.0,
                     feature_layer="prj")


def test_weights_only_and_clear_errors(store, tmp_path, user_module):
    from suite.models.zoo import register_zoo

    weights, net = _weights(tmp_path, 6)
    pickled = tmp_path / "whole-module.pt"
    torch.save(net, pickled)  # a pickle of code: never unpickled
    with pytest.raises(SuiteError, match="not a plain state dict"):
        register_zoo(f"py:{MODULE}:make?width=6", weights_file=pickled, source_top1=50.0)
    with pytest.raises(SuiteError, match="does not fit.*shape mismatches"):
        register_zoo(f"py:{MODULE}:make?width=8", weights_file=weights, source_top1=50.0)
    with pytest.raises(SuiteError, match="needs its weights and source accuracy"):
        register_zoo(f"py:{MODULE}:make", weights_file=weights)
    with pytest.raises(SuiteError, match="Cannot import 'no_such_module'"):
        register_zoo("py:no_such_module:make", weights_file=weights, source_top1=50.0)
    with pytest.raises(SuiteError, match="only apply to py:"):
        register_zoo("resnet18", input_size=32)
    with pytest.raises(SuiteError, match=r"Calling make\(width=8\)"):
        register_zoo(f"py:{MODULE}:make?depth=3", weights_file=weights, source_top1=50.0)


def test_py_arch_in_a_study_config(user_module):
    """A study's ``arch: "py:..."`` is checked up front and builds at random init for the
    scratch setting, with a classifier for the target's classes."""
    models.check_arch(f"py:{MODULE}:make")
    with pytest.raises(SuiteError):
        models.check_arch(f"py:{MODULE}:missing")
    net = models.build_model(f"py:{MODULE}:make?width=4", 5, weights=None)
    assert net.head.out_features == 5 and net(torch.zeros(2, 3, 16, 16)).shape == (2, 5)
    fixed = models.build_model(f"py:{MODULE}:make?width=4", 5, bn_scale=False)
    assert not fixed.body[1].weight.requires_grad
