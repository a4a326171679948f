"""suite.features.input_plan: a network sees its own training normalisation, whatever the data.

Four pairings: a SmallCNN pretrained on synth-source (synthetic.MEAN/STD) and an ImageNet
checkpoint (ImageNet statistics), each on a synthetic dataset (generated normalised with
synthetic.MEAN/STD) and on an on-disk one (decoded images). A constant-colour image must reach
the network as (colour - model mean) / model std on every pixel, through both consumers of the
plan: fine-tuning (``finetune._load_data`` and the on-device resize) and the probe's extraction
(``run_extractor`` with an identity extractor, which returns its inputs as the features).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import suite.data
import suite.finetune
from suite.config import FinetuneConfig
from suite.data import DatasetInfo, TensorImageDataset, synthetic
from suite.features import input_plan, run_extractor
from suite.models import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_thread")

RGB = (51, 128, 204)  # the constant colour, uint8 (PNG keeps it exactly)
COLOUR = torch.tensor(RGB, dtype=torch.float32) / 255.0
SYNTH = DatasetInfo("const-synth", 2, "top1", has_val=True, kind="synthetic", image_size=32)
# Tags as versions registered before input_mean/input_std existed carry them: the statistics
# are inferred from the source (synthetic -> synthetic.MEAN/STD, imagenet -> the weights').
MODELS = {
    "cnn": ({"architecture": "cnn", "width": "4", "depth": "1", "image_size": "32",
             "source_dataset": "synth-source"}, synthetic.MEAN, synthetic.STD),
    "resnet18": ({"architecture": "resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1",
                  "image_size": "224", "source_dataset": "imagenet"},
                 IMAGENET_MEAN, IMAGENET_STD),
}


def _synthetic_split(n: int = 4, transform=None) -> TensorImageDataset:
    """Constant-colour images as the synthetic sets are stored: normalised with their MEAN/STD."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (synthetic.MEAN, synthetic.STD))
    x = ((COLOUR.view(1, 3, 1, 1) - mean) / std).expand(n, 3, 32, 32).contiguous()
    return TensorImageDataset(x, torch.arange(n) % 2, transform=transform)


@pytest.fixture
def datasets(tmp_path, monkeypatch):
    """{"synthetic": name, "on-disk": name}: a constant-colour synthetic set and a folder tree
    of constant-colour PNGs (10 × 8, so every network resizes and crops them)."""
    for split in ("train", "val", "test"):
        for c in ("a", "b"):
            for i in range(2):
                path = tmp_path / "tree" / split / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (10, 8), RGB).save(path)
    real_info, real_load = suite.data.get_info, suite.data.load_split
    monkeypatch.setattr(suite.data, "get_info", lambda name, root="": SYNTH
                        if name == SYNTH.name else real_info(name, root))
    monkeypatch.setattr(suite.data, "load_split", lambda name, split, **kw: _synthetic_split(
                            transform=kw.get("transform"))
                        if name == SYNTH.name else real_load(name, split, **kw))
    return {"synthetic": SYNTH.name, "on-disk": f"folder:{tmp_path / 'tree'}"}


def _expected(mean, std) -> torch.Tensor:
    return (COLOUR - torch.tensor(mean)) / torch.tensor(std)  # (3,)


def _check(x: torch.Tensor, side: int, mean, std) -> None:
    """``x`` (n, 3, side, side) is the constant colour normalised with (mean, std)."""
    assert tuple(x.shape[1:]) == (3, side, side)
    want = _expected(mean, std).view(1, 3, 1, 1).expand_as(x)
    torch.testing.assert_close(x, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["synthetic", "on-disk"])
@pytest.mark.parametrize("arch", list(MODELS))
def test_the_network_receives_its_own_normalisation(datasets, arch, kind):
    tags, mean, std = MODELS[arch]
    mv = SimpleNamespace(name=f"m-{arch}", version="1", tags=tags)
    side = int(tags["image_size"])
    dataset = datasets[kind]

    # Fine-tuning: the training split through the loader, then the network's on-device resize.
    cfg = FinetuneConfig(model_name=mv.name, dataset=dataset, num_workers=0, device="cpu")
    data = suite.finetune._load_data(cfg, mv)
    images, _ = next(iter(suite.data.make_loader(data.train, 4, shuffle=False, num_workers=0)))
    if data.resize_to:
        images = suite.finetune._Resized(torch.nn.Identity(), data.resize_to)(images)
    _check(images, side, mean, std)

    # The probe: the same plan, through run_extractor (its on-device resize included).
    transform, resize_to = input_plan(mv, suite.data.get_info(dataset))
    split = suite.data.load_split(dataset, "test", transform=transform)
    loader = suite.data.make_loader(split, 4, shuffle=False, num_workers=0)
    x, _ = run_extractor(torch.nn.Identity(), loader, torch.device("cpu"), image_size=resize_to)
    _check(torch.from_numpy(x).view(len(x), 3, side, side), side, mean, std)


def test_recorded_statistics_win_over_the_inferred_ones(datasets):
    """A version that records input_mean/input_std (every version registered now) is
    normalised with them, e.g. a SmallCNN pretrained on an on-disk source (ImageNet's)."""
    tags = {**MODELS["cnn"][0], "source_dataset": "folder:/somewhere",
            "input_mean": ",".join(map(str, IMAGENET_MEAN)),
            "input_std": ",".join(map(str, IMAGENET_STD))}
    mv = SimpleNamespace(name="m", version="1", tags=tags)
    transform, resize_to = input_plan(mv, SYNTH)
    assert resize_to is None
    x = transform(_synthetic_split(1).images)
    _check(x, 32, IMAGENET_MEAN, IMAGENET_STD)
    # The synthetic-source cnn on synthetic data needs nothing at all.
    assert input_plan(SimpleNamespace(tags=MODELS["cnn"][0]), SYNTH) == (None, None)
