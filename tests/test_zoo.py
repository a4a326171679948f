"""suite.models.zoo: the ImageNet checkpoint table and registration from a local weights file
into a temporary MLflow store. Nothing is downloaded: weights files are written by the tests
and a download fails as on an offline machine (the offline_hub fixture)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from suite import tracking
from suite.errors import SuiteError
from suite.models import feature_extractor, model_from_version
from suite.models.zoo import PAPER_ARCHS, list_zoo, register_zoo

ARCH = "mobilenet_v3_small"  # the smallest torchvision network with a classifier dropout


def test_list_zoo_rows():
    rows = list_zoo()
    by_id = {r["weights"]: r for r in rows if r["source"] == "torchvision"}
    r50 = by_id["ResNet50_Weights.IMAGENET1K_V1"]
    assert r50["name"] == "resnet50" and r50["acc@1"] == pytest.approx(76.13)
    assert r50["acc@5"] == pytest.approx(92.862) and r50["resolution"] == 224
    assert r50["paper"] and r50["paper_name"] == "ResNet-50" and r50["in_torchvision"]
    assert r50["params"] == 25557032
    assert by_id["ResNet50_Weights.IMAGENET1K_V2"]["default"]
    assert not by_id["ResNet50_Weights.IMAGENET1K_V2"]["paper"]  # V2 recipe != the paper's
    assert by_id["Inception_V3_Weights.IMAGENET1K_V1"]["resolution"] == 299
    # Every torchvision classification architecture has at least one row.
    names = {r["name"] for r in rows}
    assert set(torchvision.models.list_models(module=torchvision.models)) <= names
    # The paper's 16: each appears exactly once, marked.
    paper = [r for r in rows if r["paper"]]
    assert len(PAPER_ARCHS) == 16 and len(paper) == 16
    assert {r["paper_name"] for r in paper} == {p.paper_name for p in PAPER_ARCHS}
    missing = {r["paper_name"] for r in paper if not r["in_torchvision"]}
    assert {"Inception v4", "Inception-ResNet v2", "MobileNet v1", "NASNet-A Large",
            "NASNet-A Mobile", "BN-Inception"} <= missing
    v4 = next(r for r in paper if r["paper_name"] == "Inception v4")
    assert v4["timm_name"] and v4["name"] == f"timm:{v4['timm_name']}"


def test_register_from_weights_file_round_trips(store, tmp_path, offline_hub):
    torch.manual_seed(0)
    src = torchvision.models.get_model(ARCH, weights=None).eval()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)

    mv = register_zoo(ARCH, weights_file=path, study="zoo-test")
    assert mv.name == f"tv-{ARCH}"
    t = mv.tags
    assert t["architecture"] == ARCH and t["source_dataset"] == "imagenet"
    assert float(t["source_top1"]) == pytest.approx(67.668)  # from the weights' meta
    assert t["weights"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert t["image_size"] == "224" and t["num_classes"] == "1000"
    assert float(t["dropout"]) == pytest.approx(0.2) and "crop 224" in t["preprocessing"]
    assert t[tracking.TAG_STUDY] == "zoo-test"

    loaded = model_from_version(mv)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x))
        torch.testing.assert_close(feature_extractor(loaded)(x), feature_extractor(src)(x))

    # The same checkpoint again: the existing version is returned, nothing is logged twice.
    again = register_zoo(ARCH, weights_file=path, study="zoo-test")
    assert again.version == mv.version
    # A checkpoint of one's own with its own top-1 is a new version.
    own = register_zoo(ARCH, weights_file=path, study="zoo-test", source_top1=55.5,
                       registered_name="mine")
    assert own.name == "mine" and float(own.tags["source_top1"]) == 55.5
    assert own.tags["source_top1_origin"] == "user"


@pytest.mark.parametrize("arch", ["googlenet", "inception_v3"])
def test_inception_checkpoints_register_without_aux_heads(store, tmp_path, offline_hub, arch):
    """torchvision's googlenet / inception_v3 builders reject aux_logits=False with weights
    (their checkpoints hold the auxiliary heads); registration drops them after loading."""
    torch.manual_seed(0)
    src = torchvision.models.get_model(arch, weights=None, init_weights=False).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(src.state_dict(), path)
    mv = register_zoo(arch, weights_file=path, study="zoo-test")
    loaded = model_from_version(mv)
    assert not loaded.aux_logits
    assert all(getattr(loaded, n, None) is None for n in ("aux1", "aux2", "AuxLogits"))
    assert loaded.transform_input  # torchvision's convention for these checkpoints
    want = {k: v for k, v in src.state_dict().items() if not k.lower().startswith("aux")}
    got = loaded.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v)
    with torch.no_grad():
        out = loaded(torch.randn(1, 3, 80, 80))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 1000)


def test_wrong_architecture_file_names_keys(store, tmp_path, offline_hub):
    path = tmp_path / "wrong.pth"
    state = torchvision.models.get_model(ARCH, weights=None).state_dict()
    state.pop("classifier.3.weight")
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(SuiteError) as e:
        register_zoo(ARCH, weights_file=path)
    msg = str(e.value)
    assert "missing keys: classifier.3.weight" in msg
    assert "unexpected keys: extra.weight" in msg


def test_missing_weights_say_where_to_put_them(store, offline_hub):
    with pytest.raises(SuiteError) as e:
        register_zoo("resnet18")
    msg = str(e.value)
    expected = f"{torch.hub.get_dir()}/checkpoints/resnet18-f37072fd.pth"
    assert expected in msg and "--weights-file" in msg


def test_unknown_names():
    with pytest.raises(SuiteError, match="resnet50"):
        register_zoo("resnet5O")
    with pytest.raises(SuiteError, match="IMAGENET1K_V1"):
        register_zoo("resnet50:IMAGENET1K_V7")


def test_timm_is_optional(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(SuiteError, match=r"pip install 'suite\[timm\]'"):
        register_zoo("timm:inception_v4.tf_in1k", source_top1=80.1)


TIMM_NAME = "mobilenetv1_100.ra4_e3600_r224_in1k"  # MobileNet v1: a paper network torchvision lacks


def test_timm_checkpoint_registers_through_the_same_path(store, tmp_path):
    """``timm:NAME`` from a weights file: registration, tags, load, penultimate features."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    src = timm.create_model(TIMM_NAME, pretrained=False).eval()
    path = tmp_path / "mnv1.pth"
    torch.save(src.state_dict(), path)

    with pytest.raises(SuiteError, match="--source-top1"):
        register_zoo(f"timm:{TIMM_NAME}", weights_file=path)
    mv = register_zoo(f"timm:{TIMM_NAME}", weights_file=path, source_top1=72.4,
                      study="zoo-test")
    t = mv.tags
    assert mv.name == f"timm-{TIMM_NAME}"
    assert t["architecture"] == f"timm:{TIMM_NAME}" and t["source_dataset"] == "imagenet"
    assert float(t["source_top1"]) == 72.4 and t["source_top1_origin"] == "user"
    assert t["image_size"] == "224" and t["num_classes"] == "1000"
    loaded = model_from_version(mv)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x))
        feats = feature_extractor(loaded)(x)
    assert feats.shape == (2, 1024)
    assert register_zoo(f"timm:{TIMM_NAME}", weights_file=path, source_top1=72.4,
                        study="zoo-test").version == mv.version

    wrong = tmp_path / "wrong.pth"
    state = dict(src.state_dict())
    state.pop("classifier.weight")
    torch.save(state, wrong)
    with pytest.raises(SuiteError, match="missing keys: classifier.weight"):
        register_zoo(f"timm:{TIMM_NAME}", weights_file=wrong, source_top1=72.4)


def test_paper_timm_names_exist():
    """Every timm name the zoo lists for a paper network is a pretrained timm model."""
    timm = pytest.importorskip("timm")
    named = [p for p in PAPER_ARCHS if p.timm_name]
    assert {p.paper_name for p in named} >= {"Inception v4", "Inception-ResNet v2",
                                              "MobileNet v1", "NASNet-A Large"}
    for p in named:
        assert p.timm_name in timm.list_pretrained(p.timm_name), p.timm_name
