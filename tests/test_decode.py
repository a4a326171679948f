"""suite.data.decode: the three JPEG decoders agree with PIL to one grey level on real JPEG files
(grayscale, CMYK and PNG included), the choice of decoder, the device decoder's fallbacks,
corrupt files named, worker sizing, and extraction of a registered torchvision model from an
ImageFolder tree with each decoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from fakes import register
from PIL import Image

from suite import features, models, tracking
from suite.data import decode, loader, make_loader
from suite.data.files import FileListDataset
from suite.data.paper import ArrayImageDataset
from suite.errors import SuiteError
from suite.features import _jpeg_bytes

# One grey level in ImageNet-normalised units is 1 / (255 * 0.225) = 0.0174.
ONE_LEVEL = 1.0 / (255 * 0.224) + 1e-4


def _transform():
    return torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()


def _write_images(folder, n=6, labels=3):
    """``n`` photo-like 300×400 JPEGs, plus a grayscale JPEG, a CMYK JPEG and a PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, b in enumerate(_jpeg_bytes(n, 300, 400, seed=len(str(folder)))):
        path = folder / f"{i}.jpg"
        path.write_bytes(b)
        samples.append((str(path), i % labels))
    first = Image.open(samples[0][0])
    first.convert("L").save(folder / "gray.jpg", quality=90)
    first.convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    first.save(folder / "image.png")
    samples += [(str(folder / "gray.jpg"), 0), (str(folder / "cmyk.jpg"), 1),
                (str(folder / "image.png"), 2)]
    return samples


@pytest.fixture
def files(tmp_path):
    return FileListDataset(_write_images(tmp_path / "img"), ["a", "b", "c"], _transform())


def _batches(ds, decoder, batch_size=4, num_workers=0):
    loader_, batch_decode = decode.decoding_loader(ds, decoder, batch_size,
                                                   device=torch.device("cpu"),
                                                   num_workers=num_workers)
    xs, ys = [], []
    for images, labels in loader_:
        xs.append(batch_decode(images) if batch_decode else images)
        ys.append(labels)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("decoder", ["torchvision", "device"])
def test_tensor_decoders_match_pil_to_one_grey_level(files, decoder):
    ref_x, ref_y = _batches(files, "pil")
    x, y = _batches(files, decoder)
    assert x.shape == ref_x.shape == (len(files), 3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(y, ref_y, rtol=0, atol=0)
    diff = (x - ref_x).abs()
    assert diff.max() <= ONE_LEVEL, float(diff.max())
    assert diff.mean() < 0.25 * ONE_LEVEL


@pytest.mark.parametrize("decoder", ["pil", "torchvision", "device"])
def test_decoders_in_worker_processes(files, decoder):
    """What the workers return crosses the process boundary intact (the device decoder's
    payloads once could not: its tensors failed to pickle and the loader hung)."""
    x0, y0 = _batches(files, decoder)
    x1, y1 = _batches(files, decoder, num_workers=2)
    torch.testing.assert_close(x1, x0, rtol=0, atol=0)
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)


def test_encoded_items_carry_jpeg_bytes_and_decode_other_formats(files):
    enc = decode.Encoded(files)
    data, target, path = enc[0]
    assert isinstance(data, bytes) and path == files.samples[0][0] and target == 0
    assert data == Path(path).read_bytes() and data.startswith(b"\xff\xd8\xff")
    png, _, png_path = enc[len(files) - 1]
    assert png_path.endswith(".png") and png.shape == (3, 300, 400)


def test_decoder_choice(files, tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert decode.resolve_decoder("auto", files, cpu) == "pil"
    assert decode.resolve_decoder("auto", files, cuda) == "device"
    assert decode.resolve_decoder("torchvision", files, cpu) == "torchvision"
    assert decode.resolve_decoder("device", files, cpu) == "device"
    # In-memory arrays (CIFAR) are never decoded; a PIL-only transform keeps PIL on auto.
    arrays = ArrayImageDataset(np.zeros((2, 8, 8, 3), np.uint8), [(0, 0), (1, 1)], ["a", "b"],
                               _transform())
    assert decode.resolve_decoder("device", arrays, cuda) == "pil"
    pil_only = FileListDataset(files.samples, files.classes, transform=None)  # ToTensor inside
    assert decode.resolve_decoder("auto", pil_only, cuda) == "pil"
    with pytest.raises(SuiteError, match="--decode pil"):
        decode.resolve_decoder("device", pil_only, cuda)
    with pytest.raises(SuiteError, match="Unknown JPEG decoder"):
        decode.resolve_decoder("nvdec", files, cpu)


def test_device_decoder_falls_back_image_by_image(files, monkeypatch):
    """A batched decode that fails is redone image by image (here on the CPU), same pixels."""
    ref_x, _ = _batches(files, "device")
    real = torchvision.io.decode_jpeg

    def batch_fails(data, *a, **k):
        if isinstance(data, list):
            raise RuntimeError("nvjpeg: batch decode failed")
        return real(data, *a, **k)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", batch_fails)
    dec = decode.DeviceDecoder(files.transform, torch.device("cpu"))
    enc = decode.Encoded(files)
    batch, _ = decode.collate_encoded([enc[i] for i in range(len(files))])
    torch.testing.assert_close(dec(batch), ref_x, rtol=0, atol=0)
    assert dec.cpu_fallbacks == len(files) - 1  # every JPEG; the PNG was decoded in the worker
    assert dec.warned  # a whole batch went to the CPU: said once


@pytest.mark.parametrize("decoder", ["torchvision", "device"])
def test_truncated_jpeg_is_named(tmp_path, decoder):
    samples = _write_images(tmp_path / "img", n=2)
    path = Path(samples[1][0])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ds = FileListDataset(samples, ["a", "b", "c"], _transform())
    with pytest.raises(SuiteError, match="1.jpg is corrupt or truncated"):
        _batches(ds, decoder)


def test_workers_sized_to_the_machine(monkeypatch):
    monkeypatch.setattr(loader, "available_cpus", lambda: 12)
    assert loader.resolve_workers(-1) == 11 and loader.resolve_workers(3) == 3
    assert loader.resolve_workers(0) == 0
    monkeypatch.setattr(loader, "available_cpus", lambda: 64)
    assert loader.resolve_workers(-1) == loader.MAX_AUTO_WORKERS
    monkeypatch.setattr(loader, "available_cpus", lambda: 1)
    assert loader.resolve_workers(-1) == 0
    ds = FileListDataset([], [])
    assert make_loader(ds, 2, shuffle=False).num_workers == 0


def test_extract_with_each_decoder(store, tmp_path):
    """A registered torchvision ResNet-18 (random weights) on an ImageFolder tree: the three
    decoders give the same features to rounding, and the cache records which one ran."""
    root = tmp_path / "tree"
    for split in ("train", "test"):
        for c in ("a", "b"):
            _write_images(root / split / c, n=2)
    torch.manual_seed(0)
    net = models.build_model("resnet18", 2, weights=None).eval()
    tags = {tracking.VTAG_ARCH: "resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1",
            "image_size": 224}
    mv = register(net, "d-resnet18", tags, study="d")
    out = {}
    for decoder in ("pil", "torchvision", "device"):
        path = features.cache_path(mv.name, mv.version, f"folder:{root}", "test")
        path.unlink(missing_ok=True)
        out[decoder] = features.extract(mv, f"folder:{root}", "test", device="cpu",
                                        batch_size=4, num_workers=0, decode=decoder)
        with np.load(path) as z:
            assert json.loads(str(z["meta"]))["decode"] == decoder
    ref_x, ref_y = out["pil"]
    assert ref_x.shape == (10, 512)
    scale = np.abs(ref_x).max()
    for decoder in ("torchvision", "device"):
        x, y = out[decoder]
        np.testing.assert_array_equal(y, ref_y)
        assert np.abs(x - ref_x).max() < 0.005 * scale  # measured: 0.0007


@pytest.mark.gpu
def test_nvjpeg_matches_pil(files):
    """Batched nvJPEG decode plus the transform on the GPU against PIL on the CPU: libjpeg and
    nvJPEG may round the inverse DCT differently, so a few grey levels at most."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ref_x, _ = _batches(files, "pil")
    cuda = torch.device("cuda")
    loader_, batch_decode = decode.decoding_loader(files, "device", 4, device=cuda,
                                                   num_workers=2)
    x = torch.cat([batch_decode(images).cpu() for images, _ in loader_])
    diff = (x - ref_x).abs()
    assert diff.max() <= 4 * ONE_LEVEL, float(diff.max())
    assert diff.mean() < ONE_LEVEL
    assert batch_decode.cpu_fallbacks <= 1  # at most the CMYK file
