"""suite.models: SmallCNN and its training choices, classifier surgery on torchvision networks
(compared with the activations a forward hook sees at the final Linear's input), and the MLflow
round trip. Random weights only; nothing is downloaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from suite import models
from suite.errors import SuiteError
from suite.models import (
    SmallCNN,
    architecture_from_version,
    build_model,
    feature_extractor,
    head_path,
    log_and_register_model,
    model_from_version,
    preprocessing,
    replace_head,
)


def _x(n=4, side=32, seed=0):
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _head_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference penultimate activations: what the final classifier receives, via a hook."""
    seen = {}
    head = model.get_submodule(head_path(model))
    h = head.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0].detach()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        h.remove()
    return seen["x"].flatten(1)


@pytest.mark.parametrize("width,depth", [(8, 1), (8, 2), (16, 1)])
def test_small_cnn_shapes(width, depth):
    torch.manual_seed(0)
    m = SmallCNN(7, width=width, depth=depth)
    x = _x()
    assert m(x).shape == (4, 7)
    assert m.forward_features(x).shape == (4, 4 * width)
    assert m.num_features == 4 * width


def test_bn_scale_false_freezes_gamma():
    torch.manual_seed(0)
    free = SmallCNN(5, width=8, depth=2, bn_scale=True)
    fixed = SmallCNN(5, width=8, depth=2, bn_scale=False)
    bns = [m for m in fixed.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    param_ids = {id(p) for p in fixed.parameters()}
    for bn in bns:
        assert id(bn.weight) not in param_ids and not bn.weight.requires_grad
        assert isinstance(bn.bias, nn.Parameter)  # β is still learned
    # Same state_dict keys (γ is a persistent buffer), fewer parameters.
    assert fixed.state_dict().keys() == free.state_dict().keys()
    n_gamma = sum(bn.num_features for bn in bns)
    assert (sum(p.numel() for p in free.parameters())
            - sum(p.numel() for p in fixed.parameters())) == n_gamma
    # A training step leaves γ at exactly 1.
    opt = torch.optim.SGD(fixed.parameters(), lr=1.0, weight_decay=0.1)
    fixed.train()
    fixed(_x()).logsumexp(1).sum().backward()
    opt.step()
    for bn in bns:
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))


def test_aux_head_train_vs_eval():
    torch.manual_seed(0)
    m = SmallCNN(6, width=8, aux_head=True)
    out = m.train()(_x())
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == out[1].shape == (4, 6)
    assert m.eval()(_x()).shape == (4, 6)
    plain = SmallCNN(6, width=8, aux_head=False).train()
    assert isinstance(plain(_x()), torch.Tensor)


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    m = SmallCNN(6, width=8, dropout=0.5)
    x = _x()
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    b = m(x)
    assert not torch.allclose(a, b)
    assert m.dropout.p == 0.5


# torchvision networks at small inputs (each accepts 32..64 px).
@pytest.mark.parametrize("arch,side", [("cnn", 32), ("resnet18", 32), ("mobilenet_v3_small", 64),
                                       ("densenet121", 32)])
def test_feature_extractor_matches_head_input(arch, side):
    torch.manual_seed(0)
    m = build_model(arch, 5, width=8, depth=2, aux_head=arch == "cnn")
    x = _x(3, side)
    ref = _head_input(m, x)
    fe = feature_extractor(m)
    with torch.no_grad():
        got = fe(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert not fe.training
    assert isinstance(m.get_submodule(head_path(m)), nn.Linear)  # the original is untouched


def test_feature_extractor_squeezenet_is_pooled_trunk():
    torch.manual_seed(0)
    m = build_model("squeezenet1_1", 5).eval()
    x = _x(2, 64)
    with torch.no_grad():
        ref = m.features(x).mean(dim=(2, 3))  # (N, 512)
        got = feature_extractor(m)(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,side", [("cnn", 32), ("mobilenet_v3_small", 64),
                                       ("squeezenet1_1", 64)])
def test_replace_head(arch, side):
    torch.manual_seed(0)
    m = build_model(arch, 5, width=8, aux_head=arch == "cnn").eval()
    x = _x(2, side)
    with torch.no_grad():
        feats = feature_extractor(m)(x)
    out = replace_head(m, 3)
    assert out is m
    with torch.no_grad():
        assert m.eval()(x).shape == (2, 3)
        torch.testing.assert_close(feature_extractor(m)(x), feats)  # trunk unchanged
    if arch == "cnn":
        _, aux = m.train()(x)
        assert aux.shape == (2, 3) and m.num_classes == 3


def test_unknown_arch_names_close_matches():
    with pytest.raises(SuiteError, match="resnet50") as e:
        build_model("resnet5", 3)
    assert "Unknown architecture" in str(e.value)


def test_torchvision_training_choices():
    torch.manual_seed(0)
    m = build_model("resnet18", 4, bn_scale=False, dropout=0.3)
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    params = {id(p) for p in m.parameters()}
    assert bns and all(id(bn.weight) not in params for bn in bns)
    assert isinstance(m.fc, nn.Sequential) and m.fc[0].p == 0.3  # dropout inserted
    mb = build_model("mobilenet_v3_small", 4, dropout=0.1)
    assert mb.classifier[2].p == 0.1  # the existing classifier dropout is set
    with pytest.raises(SuiteError, match="batch-norm"):
        build_model("squeezenet1_1", 4, bn_scale=False)  # no batch norm at all
    with pytest.raises(SuiteError, match="auxiliary"):
        build_model("resnet18", 4, aux_head=True)
    with pytest.raises(SuiteError, match="googlenet"):
        build_model("googlenet", 4, aux_head=True)
    with pytest.raises(SuiteError, match="pretrained"):
        build_model("resnet18", 4, bn_scale=False, weights="DEFAULT")


def test_preprocessing():
    tf, side = preprocessing("cnn")
    x = _x(1)[0]
    assert side == 32 and tf(x) is x  # synthetic tensors are already normalised 32×32
    from PIL import Image

    img = Image.new("RGB", (50, 40), (10, 200, 30))
    assert tf(img).shape == (3, 32, 32)
    tf, side = preprocessing("resnet50", "IMAGENET1K_V1")
    assert side == 224 and list(tf.crop_size) == [224]
    assert preprocessing("inception_v3")[1] == 299
    with pytest.raises(SuiteError, match="IMAGENET1K_V1"):
        preprocessing("resnet50", "IMAGENET1K_V9")


def test_log_register_load_round_trip(store):
    from suite import tracking

    torch.manual_seed(0)
    m = build_model("cnn", 6, width=8, depth=2, bn_scale=False, dropout=0.2, aux_head=True)
    m.train()
    tags = {tracking.VTAG_ARCH: "cnn", "width": 8, "depth": 2, "bn_scale": False,
            "dropout": 0.2, "aux_head": True, "num_classes": 6}
    with tracking.start_run("t", "r", tracking.run_tags("t", "pretrain")):
        mv = log_and_register_model(m, "t-cnn", tags, torch.zeros(1, 3, 32, 32))
    assert m.training  # the caller's model is left as it was
    assert mv.name == "t-cnn" and mv.tags["bn_scale"] == "False"
    loaded = model_from_version(tracking.get_version("t-cnn", mv.version))
    assert isinstance(loaded, SmallCNN) and not loaded.training
    x = _x(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m.eval()(x))
    # The scratch network: the architecture as it builds itself, without the training choices.
    fresh = architecture_from_version(mv, 3)
    assert (fresh.width, fresh.depth, fresh.bn_scale, fresh.aux_head) == (8, 2, True, False)
    assert fresh.dropout.p == 0.0 and fresh.num_classes == 3


def test_log_outside_run_is_an_error():
    with pytest.raises(RuntimeError, match="inside an MLflow run"):
        log_and_register_model(SmallCNN(2, width=4), "x", {}, None)


def test_architectures_lists_cnn_and_torchvision():
    names = models.architectures()
    assert names[0] == "cnn" and "resnet50" in names and "vit_b_16" in names
