"""suite.features: extraction equals the extractor applied by hand, the cache is atomic and reused,
a corrupt cache is recomputed, NaN features are refused. A tiny registered SmallCNN on a tiny
in-memory dataset (the dataset lookup and its fingerprint are replaced), in a temporary MLflow
store. The cache's key (fingerprints of real datasets): tests/test_feature_cache.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import register
from torch.nn import functional as F

from suite import data, features, models, tracking
from suite.data import DatasetInfo, TensorImageDataset
from suite.errors import SuiteError

N, CLASSES, WIDTH = 20, 3, 4


def _images(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed({"train": 0, "val": 1, "test": 2}[split])
    return torch.randn(N, 3, 32, 32, generator=g), torch.arange(N) % CLASSES


@pytest.fixture
def tiny_data(monkeypatch):
    """Dataset "tiny": 20 random 32×32 images per split, synthetic (in memory)."""
    info = DatasetInfo(name="tiny", num_classes=CLASSES, metric="top1", has_val=True,
                       kind="synthetic", image_size=32)
    monkeypatch.setattr(data, "get_info", lambda name, root="": info)

    def load_split(name, split, *, root="", transform=None, seed=0, val_fraction=0.2,
                   skip_corrupt=False):
        return TensorImageDataset(*_images(split), transform=transform)

    monkeypatch.setattr(data, "load_split", load_split)
    monkeypatch.setattr(data, "split_fingerprint", lambda name, split, **kw: {
        "kind": "synthetic", "dataset": name, "root": "", "split": split, "n": N,
        "digest": f"tiny-{split}"})


def _register(model, **extra_tags):
    tags = {tracking.VTAG_ARCH: "cnn", "width": WIDTH, "depth": 1, "image_size": 32,
            **extra_tags}
    return register(model, "f-cnn", tags, study="f")


@pytest.fixture
def version(store):
    torch.manual_seed(0)
    model = models.build_model("cnn", CLASSES, width=WIDTH).eval()
    return model, _register(model)


def _reference(model, split, side=32):
    x, y = _images(split)
    if side != 32:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                          antialias=True)
    with torch.no_grad():
        return model.eval().forward_features(x).numpy(), y.numpy()


def test_extract_matches_reference_and_caches(version, tiny_data):
    model, mv = version
    x, y = features.extract(mv, "tiny", "train", device="cpu", batch_size=8)
    ref_x, ref_y = _reference(model, "train")
    assert x.shape == (N, 4 * WIDTH) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x, ref_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y, ref_y)

    path = features.cache_path(mv.name, mv.version, "tiny", "train")
    assert path.parent.parent == (tracking.current().workspace / "features" / "f-cnn"
                                  / f"v{mv.version}")
    assert path.parent.name.startswith("tiny-") and path.name == "train.npz"
    assert [p.name for p in path.parent.iterdir()] == ["train.npz"]  # no temporary left
    with np.load(path) as z:
        np.testing.assert_array_equal(z["x"], x)
        np.testing.assert_array_equal(z["y"], y)


def test_cache_is_reused_without_running_the_model(version, tiny_data, monkeypatch):
    _, mv = version
    x1, y1 = features.extract(mv, "tiny", "val", device="cpu")

    def boom(*a, **k):
        raise AssertionError("the model was loaded although the cache is valid")

    monkeypatch.setattr(models, "model_from_version", boom)
    x2, y2 = features.extract(mv, "tiny", "val", device="cpu")
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_corrupt_cache_is_recomputed(version, tiny_data):
    model, mv = version
    path = features.cache_path(mv.name, mv.version, "tiny", "test")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated zip")
    x, _ = features.extract(mv, "tiny", "test", device="cpu")
    np.testing.assert_allclose(x, _reference(model, "test")[0], rtol=1e-5, atol=1e-6)
    with np.load(path) as z:  # rewritten whole
        assert z["x"].shape == x.shape


def test_interrupted_write_leaves_no_file(version, tiny_data, monkeypatch):
    _, mv = version

    def interrupted(f, **arrays):
        f.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        features.extract(mv, "tiny", "train", device="cpu")
    folder = features.cache_path(mv.name, mv.version, "tiny", "train").parent
    assert list(folder.iterdir()) == []


def test_resize_to_registered_input_size(store, tiny_data):
    torch.manual_seed(0)
    model = models.build_model("cnn", CLASSES, width=WIDTH).eval()
    mv = _register(model, image_size=48)  # a network that wants 48×48 inputs
    x, _ = features.extract(mv, "tiny", "train", device="cpu")
    np.testing.assert_allclose(x, _reference(model, "train", side=48)[0], rtol=1e-5, atol=1e-6)


def test_nan_features_are_refused(store, tiny_data):
    torch.manual_seed(0)
    model = models.build_model("cnn", CLASSES, width=WIDTH).eval()
    with torch.no_grad():
        model.stage3[0][0].weight[0, 0, 0, 0] = float("nan")
    mv = _register(model)
    with pytest.raises(SuiteError, match="NaN"):
        features.extract(mv, "tiny", "train", device="cpu")
    assert not features.cache_path(mv.name, mv.version, "tiny", "train").exists()


def test_holdout_splits_get_their_own_file(store):
    a = features.cache_path("m", 1, "folder:/data/x", "train")
    b = features.cache_path("m", 1, "folder:/data/x", "train", seed=1)
    c = features.cache_path("m", 1, "folder:/data/x", "test", seed=1)
    assert a.name == "train.npz" and b.name == "train-s1-vf0.2.npz" and c.name == "test.npz"
    assert a.parent == b.parent == c.parent
    assert a.parent.name.startswith("folder__data_x-")  # readable, then a hash of the exact id


def test_bench_features_runs():
    res = features.bench_features("cnn", batch_size=8, n_images=16, device="cpu", n_jpeg=4,
                                  n_files=8, num_workers=0)
    assert res["feature_dim"] == 64 and res["image_size"] == 32
    for k in ("forward_images_per_s", "extract_images_per_s", "jpeg_pil_images_per_s",
              "jpeg_torchvision_cpu_images_per_s", "files_pil_images_per_s",
              "files_pil_vs_forward"):
        assert res[k] > 0
    # The small CNN's transform takes PIL images only: no tensor decoders, no pipeline rates.
    assert "files_device_images_per_s" not in res and "pipeline_pil_images_per_s" not in res


def test_bench_jpeg_pipeline_rates():
    res = features.bench_jpeg(4, None, models.preprocessing("resnet18")[0])
    assert res["pipeline_pil_images_per_s"] > 0 and res["pipeline_torchvision_images_per_s"] > 0


@pytest.mark.gpu
def test_cuda_extraction_matches_cpu(version, tiny_data):
    """bf16 autocast + channels_last on the GPU agree with fp32 on the CPU to bf16 precision."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model, mv = version
    x_gpu, y_gpu = features.extract(mv, "tiny", "train", device="cuda")
    ref_x, ref_y = _reference(model, "train")
    np.testing.assert_allclose(x_gpu, ref_x, rtol=0.05, atol=0.05)
    np.testing.assert_array_equal(y_gpu, ref_y)
    res = features.bench_jpeg(4, torch.device("cuda"))
    assert res["jpeg_torchvision_cuda_images_per_s"] > 0
