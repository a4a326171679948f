"""Penultimate features of a registered model on a dataset split, cached on disk.

Reads: the registered model version (MLflow registry), the dataset split (suite.data).
Writes: ``<workspace>/features/<model>/v<version>/<dataset>-<hash>/<split>.npz`` with keys
``x`` (n, D) float32, ``y`` (n,) int64 or (n, k) float32 (multi-label), and ``meta`` (JSON: what
the features were computed from, checked on reuse); beside it, on request
(:func:`source_probs`), ``<split>.source.npz``: the source head's softmax on those features.

The folder is the dataset's exact id (:func:`suite.data.identity`): its sanitised name, to be
readable, and a hash of the id — a ``folder:`` tree's resolved path, a paper dataset's name and
resolved data root — so that no two datasets share a file (``folder:/x/a_b`` and
``folder:/x/a/b`` sanitise alike). ``meta["data"]`` is the split's fingerprint
(:func:`suite.data.split_fingerprint`): for on-disk datasets a digest of the exact
``(file, label)`` list with every file's size and mtime (which covers the seeded hold-out of
train/val), with its count, total bytes and newest mtime in the clear; for synthetic sets the
generator's parameters (size and mtime rather than the bytes: :mod:`suite.data.fingerprint` says
why that is enough). It is recomputed on every reuse from the directory listing and annotation
files (no image is opened unless ``skip_corrupt`` checks them) and compared: added, removed,
replaced or relabelled files, or another generator, re-extract, with a console line naming the
file and what changed. The checkpoint (``model_source``), the input plan (``input``:
:func:`input_plan_id`, the transform, normalisation and resize the network's inputs get) and,
with ``skip_corrupt``, the list of files left out are checked the same way (so a repaired file
comes back).

The cache is written atomically (a temporary file in the same folder, then ``os.replace``), so an
interrupted extraction never leaves a half-written file that a later run would read; a file that
cannot be read back (truncated by a full disk, edited, ...) is recomputed.

Extraction runs the model in eval mode under ``torch.inference_mode``, batched; on CUDA with
bf16 autocast and channels_last (features are returned as float32), on CPU in fp32. Images get
the model's own preprocessing and its own training statistics (:func:`input_plan`): on-disk
datasets are decoded and transformed in DataLoader workers or, for JPEGs on CUDA, batched on the
GPU (``decode``, :mod:`suite.data.decode`); the synthetic sets, generated normalised at 32×32,
are re-normalised to the network's statistics and, for a network registered at another input
size (an ImageNet checkpoint: 224), resized on the device, batch by batch. The cache's
``meta`` records which decoder ran; it is not part of the cache key (the decoders agree to
rounding).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape
from torch import nn
from torch.nn import functional as F

from suite import tracking
from suite.errors import SuiteError
from suite.progress import console, make_progress, resolve_device

FEATURES_DIR = "features"
DEFAULT_SEED = 0
DEFAULT_VAL_FRACTION = 0.2
_HOLDOUT_SPLITS = ("train", "val", "trainval")  # depend on the seeded hold-out
_MAX_NAME = 120  # characters of the dataset's name in its cache folder (file names: 255 bytes)


def cache_path(model_name: str, version: str | int, dataset: str, split: str, *,
               root: str = "", seed: int = DEFAULT_SEED,
               val_fraction: float = DEFAULT_VAL_FRACTION) -> Path:
    """``<workspace>/features/<model_name>/v<version>/<dataset>-<hash>/<split>.npz``.

    ``<dataset>`` is the sanitised exact id (:func:`suite.data.identity`: a ``folder:`` tree's
    resolved path), ``<hash>`` 12 hex digits of the sha256 of that id and, for the paper's
    datasets, of the resolved data root ``root``: names that sanitise alike (``folder:/x/a_b``,
    ``folder:/x/a/b``) and one dataset under two roots get their own files. Which images the
    file holds is checked against the split's fingerprint on every reuse (:func:`_read_cache`).

    A non-default hold-out (``seed``, ``val_fraction``) of the train/val/trainval splits gets its
    own file (``train-s1-vf0.3.npz``): those splits' contents depend on it.
    """
    from suite import data

    ident = data.identity(dataset, root)
    short = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    name = tracking.safe_name(ident["dataset"])
    if len(name) > _MAX_NAME:  # a deep folder: keep both ends, the hash keeps it unique
        name = f"{name[:_MAX_NAME // 3]}_{name[-(_MAX_NAME - _MAX_NAME // 3 - 1):]}"
    stem = split
    if split in _HOLDOUT_SPLITS and (seed, val_fraction) != (DEFAULT_SEED, DEFAULT_VAL_FRACTION):
        stem = f"{split}-s{seed}-vf{val_fraction:g}"
    return (tracking.current().workspace / FEATURES_DIR / tracking.safe_name(model_name)
            / f"v{version}" / f"{name}-{short}" / f"{stem}.npz")


# ---------------------------------------------------------------------------------------------
# cache I/O


def _write_atomic(path: Path, **arrays: Any) -> None:
    """np.savez into a temporary file next to ``path``, then rename over it (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # a file object: savez does not append ".npz"
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stale(path: Path, why: str) -> None:
    console.log(f"[yellow]feature cache {escape(str(path))} is stale: {escape(why)}; "
                "re-extracting[/yellow]")


def _read_cache(path: Path, meta: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (x, y) if the file exists, reads back whole, and was computed from the same
    checkpoint, the same data (``meta["data"]``, the split's fingerprint) and the same skipped
    list; else None, with a console line saying what changed (and the file is recomputed)."""
    from suite.data.fingerprint import describe_change

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
            stored = json.loads(str(z["meta"])) if "meta" in z.files else {}
    except Exception as e:  # noqa: BLE001 -- any unreadable file is recomputed
        console.log(f"[yellow]feature cache {escape(str(path))} is unreadable "
                    f"({type(e).__name__}); recomputing[/yellow]")
        return None
    if x.ndim != 2 or len(x) != len(y) or x.dtype != np.float32:
        console.log(f"[yellow]feature cache {escape(str(path))} is malformed; "
                    "recomputing[/yellow]")
        return None
    if stored.get("model_source") != meta["model_source"]:
        # Same name and version number, another checkpoint (another store).
        _stale(path, f"model source {stored.get('model_source')} -> {meta['model_source']}")
        return None
    if stored.get("input") != meta["input"]:  # another normalisation / resize of the images
        _stale(path, f"input plan {stored.get('input')} -> {meta['input']}")
        return None
    if stored.get("data", {}).get("digest") != meta["data"]["digest"]:
        _stale(path, describe_change(stored.get("data", {}), meta["data"]))
        return None
    if stored.get("skipped", []) != meta["skipped"]:
        # Computed without files now readable, or with files now skipped.
        _stale(path, f"skipped files {len(stored.get('skipped', []))} -> "
                     f"{len(meta['skipped'])}")
        return None
    return x, y


# ---------------------------------------------------------------------------------------------
# extraction


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def prepare_extractor(model: nn.Module, device: torch.device) -> nn.Module:
    """Penultimate-feature network on ``device`` (channels_last on CUDA)."""
    from suite.models import feature_extractor

    fe = feature_extractor(model).to(device)
    if device.type == "cuda":
        fe = fe.to(memory_format=torch.channels_last)
    return fe


def _device_batches(batches: Iterable, device: torch.device,
                    decode: Callable[[Any], torch.Tensor] | None) -> Iterable:
    """(images on ``device``, labels) of every batch.

    On CUDA, batch i + 1 is copied on a side stream before batch i is handed out, so the
    host-to-device transfer overlaps the forward of the batch before it (the compute stream
    waits for each copy, and ``record_stream`` keeps the allocator from reusing a batch's memory
    while the forward still reads it). ``decode`` (the ``device`` JPEG decoder) does its own
    transfer: its batches are compressed bytes.
    """
    if decode is not None or device.type != "cuda":
        for images, labels in batches:
            yield (decode(images) if decode is not None else images.to(device)), labels
        return
    copy_stream = torch.cuda.Stream(device)
    compute = torch.cuda.current_stream(device)

    def issue(batch):
        images, labels = batch
        with torch.cuda.stream(copy_stream):
            return images.to(device, non_blocking=True), labels

    it = iter(batches)
    first = next(it, None)
    pending = issue(first) if first is not None else None
    while pending is not None:
        compute.wait_stream(copy_stream)
        images, labels = pending
        images.record_stream(compute)
        following = next(it, None)
        pending = issue(following) if following is not None else None
        yield images, labels


def run_extractor(extractor: nn.Module, batches: Iterable, device: torch.device, *,
                  image_size: int | None = None, total: int | None = None,
                  description: str = "features",
                  decode: Callable[[Any], torch.Tensor] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Features of every batch: (x (n, D) float32, y (n,) or (n, k)).

    ``image_size``: resize (bilinear, antialiased) batches of another size to it on the device.
    ``decode``: maps each batch's images to a float tensor on ``device`` (the ``device`` JPEG
    decoder, :class:`suite.data.decode.DeviceDecoder`); None: the images are a tensor already.

    On CUDA nothing waits for the GPU inside the loop: inputs are copied ahead on a side stream
    (:func:`_device_batches`) and features come back by asynchronous copies into pinned host
    memory, with one synchronisation at the end before they are read.
    """
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    cuda = device.type == "cuda"
    with make_progress() as bar, torch.inference_mode(), _autocast(device):
        task = bar.add_task(description, total=total)
        for images, labels in _device_batches(batches, device, decode):
            if image_size and tuple(images.shape[-2:]) != (image_size, image_size):
                images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                                       align_corners=False, antialias=True)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            feats = extractor(images)
            if isinstance(feats, (tuple, list)):  # defensive: never the aux output
                feats = feats[0]
            xs.append(feats.float().flatten(1).to("cpu", non_blocking=cuda))
            ys.append(torch.as_tensor(labels))
            bar.advance(task)
        _sync(device)  # the asynchronous copies back must land before x is read
    if not xs:
        raise SuiteError("The dataset split is empty; there is nothing to extract.",
                         "Check the dataset (suite data list).")
    x = torch.cat(xs).numpy()
    y = torch.cat(ys).numpy()
    y = y.astype(np.float32) if y.ndim == 2 else y.astype(np.int64)
    return np.ascontiguousarray(x, dtype=np.float32), y


def input_plan(mv, info) -> tuple[Any, int | None]:
    """(per-image transform for the dataset, on-device resize side or None) of a version: what
    turns the dataset's items into the inputs the network was trained on. The probe's
    extraction and fine-tuning both use it.

    The network always sees inputs normalised with its own training statistics
    (:func:`suite.models.input_normalisation`): on-disk images go through the architecture's
    preprocessing cropped to the network's side and normalised with those statistics; the
    synthetic sets, generated normalised with ``synthetic.MEAN/STD`` at their native side, are
    re-normalised to them (:class:`suite.models.Renormalise`, none when they agree, as for a
    SmallCNN pretrained on ``synth-source``) and resized on the device when the network was
    registered at another side (an ImageNet checkpoint: 224).
    """
    from suite import models
    from suite.data import synthetic

    tags = mv.tags or {}
    side = models.input_side(tags)
    mean, std = models.input_normalisation(tags)
    if info.kind == "synthetic":
        renorm = models.make_renormalise(synthetic.MEAN, synthetic.STD, mean, std)
        return renorm, (side if side != info.image_size else None)
    transform, _ = models.version_preprocessing(tags)
    return models.with_normalisation(transform, side, mean, std), None


def input_plan_id(mv, info) -> str:
    """A readable description of :func:`input_plan` (transform, resize side): part of the probe's
    cell key and of the feature cache's check, so that features computed with other inputs
    (another normalisation, crop or side) are never reused."""
    transform, side = input_plan(mv, info)
    return f"{transform!r}; resize {side}"


_LOADED: tuple[tuple[str, str, str], nn.Module] | None = None


def _load_model(mv) -> nn.Module:
    """The version's network (CPU), kept for the next call: a probe extracts train, val and test
    of the same version in a row, and unpickling a large checkpoint three times is wasted."""
    global _LOADED
    from suite import models

    key = (mv.name, str(mv.version), str(mv.source))
    if _LOADED is None or _LOADED[0] != key:
        _LOADED = None  # release the previous one first
        _LOADED = (key, models.model_from_version(mv))
    return _LOADED[1]


def extract(mv, dataset: str, split: str, *, root: str = "", device: Any = "auto",
            batch_size: int = 256, num_workers: int = -1, seed: int = DEFAULT_SEED,
            val_fraction: float = DEFAULT_VAL_FRACTION, decode: str = "auto",
            skip_corrupt: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features of registered version ``mv`` on one split of ``dataset``:
    (x (n, D) float32, y (n,) int64 or (n, k) float32). Cached (see the module docstring).

    ``num_workers``: DataLoader workers for on-disk datasets (-1: sized to the machine,
    :func:`suite.data.loader.resolve_workers`); in-memory synthetic sets are batched by tensor
    indexing without workers. ``decode``: where JPEGs are decoded (:mod:`suite.data.decode`).
    ``skip_corrupt``: check every file first and leave the unreadable ones out (they are
    logged); the cache records which, and is only reused for the same list.
    """
    from suite import data
    from suite.data.decode import decoding_loader, resolve_decoder
    from suite.data.files import log_skipped

    path = cache_path(mv.name, mv.version, dataset, split, root=root, seed=seed,
                      val_fraction=val_fraction)
    meta = {"model_source": str(mv.source), "model": mv.name, "version": str(mv.version),
            "dataset": dataset, "split": split, "seed": seed, "val_fraction": val_fraction,
            "skipped": [], "input": input_plan_id(mv, data.get_info(dataset, root))}

    def fingerprint(ds=None) -> dict:
        return data.split_fingerprint(dataset, split, root=root, seed=seed,
                                      val_fraction=val_fraction, loaded=ds)

    def load():
        transform, resize_to = input_plan(mv, data.get_info(dataset, root))
        return resize_to, data.load_split(dataset, split, root=root, transform=transform,
                                          seed=seed, val_fraction=val_fraction,
                                          skip_corrupt=skip_corrupt)

    loaded = None
    if skip_corrupt:  # the files must be checked before the cache can be trusted
        loaded = load()
        meta["skipped"] = log_skipped([loaded[1]], f"{dataset}-{split}")
    # Listing and stat-ing the files is cheap; with skip_corrupt, of the list kept.
    meta["data"] = fingerprint(loaded[1] if loaded else None)
    cached = _read_cache(path, meta)
    if cached is not None:
        return cached

    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if loaded is None:
        loaded = load()
        # Of the list that is extracted, taken before any image is read: a file changed from
        # here on makes the next reuse re-extract rather than trust features of old bytes.
        meta["data"] = fingerprint(loaded[1])
    resize_to, ds = loaded
    meta["decode"] = decoder = resolve_decoder(decode, ds, device)  # provenance, not a key
    loader, batch_decode = decoding_loader(ds, decoder, batch_size, device=device, seed=seed,
                                           num_workers=num_workers)
    extractor = prepare_extractor(_load_model(mv), device)  # a copy: the kept one is intact
    x, y = run_extractor(extractor, loader, device, image_size=resize_to, total=len(loader),
                         description=f"features {mv.name} v{mv.version} {dataset}/{split}",
                         decode=batch_decode)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise SuiteError(
            f"Features of {mv.name} v{mv.version} on {dataset}/{split} contain NaN or inf "
            f"({bad} of {len(x)} images).",
            "The checkpoint is probably broken (diverged training) or the inputs are not "
            "normalised as the model expects; check its source_top1 and preprocessing tags.")
    _write_atomic(path, x=x, y=y, meta=np.array(json.dumps(meta)))
    return x, y


# ---------------------------------------------------------------------------------------------
# source-head probabilities (for the estimators that read the source classifier: LEEP, NCE)


def source_head(model: nn.Module, feature_dim: int) -> nn.Module | None:
    """The module mapping ``model``'s penultimate features (what :func:`prepare_extractor`
    returns, (n, D)) to its source logits, or None when there is none that applies: a final
    ``nn.Linear`` taking D inputs (the classifier :func:`suite.models.feature_extractor` cuts
    off, so applying it to cached features reproduces the network's own logits; timm models:
    ``get_classifier()``). SqueezeNet's classifier (1x1 conv, ReLU, then pooling) does not
    commute with the pooling the features already went through: None."""
    from suite.models import _is_timm, head_path

    try:
        head = model.get_classifier() if _is_timm(model) else model.get_submodule(
            head_path(model))
    except (SuiteError, AttributeError):
        return None
    if not isinstance(head, nn.Linear) or head.in_features != feature_dim:
        return None
    if head.out_features < 2:
        return None
    return head


def _probs_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.source.npz")


def source_probs(mv, dataset: str, split: str, x: np.ndarray, *, root: str = "",
                 device: Any = "cpu", seed: int = DEFAULT_SEED,
                 val_fraction: float = DEFAULT_VAL_FRACTION) -> np.ndarray | None:
    """Softmax of the source head on the cached features ``x`` (n, D) of one split: (n, Z)
    float32, or None when the model has no applicable source head (:func:`source_head`).

    Cached beside the features as ``<split>.source.npz`` (key ``p``, and ``meta``: the feature
    cache's own meta, checked on reuse, so that re-extracted features recompute the
    probabilities). The head runs in float32 on ``device``.
    """
    path = cache_path(mv.name, mv.version, dataset, split, root=root, seed=seed,
                      val_fraction=val_fraction)
    probs_path = _probs_path(path)
    feature_meta = ""
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                feature_meta = str(z["meta"]) if "meta" in z.files else ""
        except Exception:  # noqa: BLE001 -- unreadable: recompute below, do not cache
            feature_meta = ""
    if feature_meta and probs_path.is_file():
        try:
            with np.load(probs_path, allow_pickle=False) as z:
                if str(z["meta"]) == feature_meta and len(z["p"]) == len(x):
                    return z["p"] if z["p"].ndim == 2 else None
        except Exception:  # noqa: BLE001 -- any unreadable file is recomputed
            pass
    head = source_head(_load_model(mv), x.shape[1])
    if head is None:
        p = np.zeros((0,), np.float32)  # "no head", cached too
    else:
        device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        head = head.to(device).eval()
        parts = []
        with torch.inference_mode():
            for i in range(0, len(x), 8192):
                logits = head(torch.from_numpy(x[i:i + 8192]).to(device).float())
                parts.append(torch.softmax(logits.float(), dim=1).cpu())
        head.to("cpu")
        p = torch.cat(parts).numpy().astype(np.float32)
    if feature_meta:
        _write_atomic(probs_path, p=p, meta=np.array(feature_meta))
    return p if p.ndim == 2 else None


# ---------------------------------------------------------------------------------------------
# benchmark


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _jpeg_bytes(n: int, height: int = 375, width: int = 500, seed: int = 0) -> list[bytes]:
    """``n`` JPEG files (quality 90) of smooth random images, the size of a typical photo in
    the paper's datasets (about 500×375)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        # Low-frequency noise upsampled: compresses like a photo, unlike white noise.
        small = torch.rand(1, 3, height // 16, width // 16, generator=g)
        img = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
        arr = (img[0].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def bench_jpeg(n_images: int = 64, device: torch.device | None = None,
               transform: Callable | None = None) -> dict[str, float]:
    """JPEG decode throughput (images/s): PIL, torchvision.io.decode_jpeg on CPU, and on the
    GPU (nvJPEG, batched) when ``device`` is CUDA. With a tensor-capable ``transform``, also
    the whole per-image pipeline on one thread (decode, then the transform) with PIL and with
    torchvision.io: what one DataLoader worker does per image."""
    from PIL import Image
    from torchvision.io import decode_jpeg

    from suite.data.decode import as_tensor, tensor_capable

    files = _jpeg_bytes(n_images)
    datas = [as_tensor(b) for b in files]

    def per_image(fn, items) -> float:
        t = time.perf_counter()
        for item in items:
            fn(item)
        return _rate(len(items), time.perf_counter() - t)

    def pil(b: bytes):
        return Image.open(io.BytesIO(b)).convert("RGB")

    res: dict[str, float] = {
        "jpeg_pil_images_per_s": per_image(lambda b: np.asarray(pil(b)), files),
        "jpeg_torchvision_cpu_images_per_s": per_image(decode_jpeg, datas),
    }
    if transform is not None and tensor_capable(transform):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker
        try:
            res["pipeline_pil_images_per_s"] = per_image(lambda b: transform(pil(b)), files)
            res["pipeline_torchvision_images_per_s"] = per_image(
                lambda d: transform(decode_jpeg(d)), datas)
        finally:
            torch.set_num_threads(threads)
    if device is not None and device.type == "cuda":
        decode_jpeg(datas[:2], device=device)  # warm-up (nvJPEG handle)
        _sync(device)
        t = time.perf_counter()
        decode_jpeg(datas, device=device)
        _sync(device)
        res["jpeg_torchvision_cuda_images_per_s"] = _rate(n_images, time.perf_counter() - t)
    return res


def bench_files(extractor: nn.Module, transform, device: torch.device, *, n_files: int,
                batch_size: int, num_workers: int = -1) -> dict[str, float]:
    """Extraction from ``n_files`` JPEG files on disk (about 500×375, written to a temporary
    folder) with each decoder that applies (:mod:`suite.data.decode`): images/s through the
    same loader and :func:`run_extractor` path :func:`extract` takes. The DataLoader workers
    are started (one batch) before the clock starts."""
    from suite.data.decode import decoding_loader, tensor_capable
    from suite.data.files import FileListDataset
    from suite.data.loader import resolve_workers

    res: dict[str, float] = {"files_n": n_files, "files_workers": resolve_workers(num_workers)}
    decoders = ("pil", "torchvision", "device") if tensor_capable(transform) else ("pil",)
    with tempfile.TemporaryDirectory(prefix="suite-bench-") as tmp:
        samples = []
        for i, b in enumerate(_jpeg_bytes(n_files, seed=1)):
            path = Path(tmp) / f"{i:05d}.jpg"
            path.write_bytes(b)
            samples.append((str(path), 0))
        ds = FileListDataset(samples, ["x"], transform)
        for decoder in decoders:
            loader, batch_decode = decoding_loader(ds, decoder, batch_size, device=device,
                                                   num_workers=num_workers)
            images, labels = next(iter(loader))  # start the workers; warm the decoder
            run_extractor(extractor, [(images, labels)], device, decode=batch_decode)
            _sync(device)
            t = time.perf_counter()
            run_extractor(extractor, loader, device, total=len(loader), decode=batch_decode,
                          description=f"files ({decoder})")
            _sync(device)
            res[f"files_{decoder}_images_per_s"] = _rate(n_files, time.perf_counter() - t)
            del loader  # stop its workers before the next decoder's start
    return res


def bench_features(arch: str = "resnet18", batch_size: int = 64, n_images: int = 512,
                   device: Any = "auto", image_size: int | None = None,
                   n_jpeg: int = 64, n_files: int = 0,
                   num_workers: int = -1) -> dict[str, Any]:
    """Extraction throughput through :func:`run_extractor` (decoded images in memory, the path
    :func:`extract` takes) vs the bare forward of the same extractor on the same batches,
    plus JPEG decode throughput; with ``n_files``, extraction from that many JPEG files with
    each decoder (:func:`bench_files`). Random weights (no download).

    The gap between the first two is the extraction overhead (batching, transfer, resize, copy
    back); the file rates against the forward say whether on-disk datasets are decode-bound.
    """
    from suite.data import TensorImageDataset, make_loader
    from suite.models import CNN, build_model, preprocessing

    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    side = image_size or preprocessing(arch)[1]
    torch.manual_seed(0)
    model = build_model(arch, 10 if arch == CNN else 1000, weights=None)
    extractor = prepare_extractor(model, device)
    images = torch.randn(n_images, 3, side, side)
    labels = torch.zeros(n_images, dtype=torch.int64)
    loader = make_loader(TensorImageDataset(images, labels), batch_size, shuffle=False)

    # Warm-up (allocator, cuDNN autotune, thread pools) on one batch.
    run_extractor(extractor, [(images[:batch_size], labels[:batch_size])], device)

    batches = [images[i:i + batch_size].to(device) for i in range(0, n_images, batch_size)]
    if device.type == "cuda":
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    _sync(device)
    t = time.perf_counter()
    with torch.inference_mode(), _autocast(device):
        for b in batches:
            extractor(b)
    _sync(device)
    forward_s = time.perf_counter() - t

    t = time.perf_counter()
    x, _ = run_extractor(extractor, loader, device, total=len(loader))
    _sync(device)
    extract_s = time.perf_counter() - t

    res: dict[str, Any] = {
        "arch": arch, "device": str(device), "batch_size": batch_size, "n_images": n_images,
        "image_size": side, "feature_dim": int(x.shape[1]),
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "forward_images_per_s": _rate(n_images, forward_s),
        "extract_images_per_s": _rate(n_images, extract_s),
        "extract_overhead": extract_s / forward_s - 1.0 if forward_s > 0 else float("nan"),
        "threads": torch.get_num_threads(),
    }
    transform = preprocessing(arch)[0]
    res.update(bench_jpeg(n_jpeg, device, transform))
    if n_files:
        res.update(bench_files(extractor, transform, device, n_files=n_files,
                               batch_size=batch_size, num_workers=num_workers))
        for k in [k for k in res if k.startswith("files_") and k.endswith("_images_per_s")]:
            res[k.replace("_images_per_s", "_vs_forward")] = res[k] / res["forward_images_per_s"]
    return res


__all__ = ["bench_features", "bench_files", "bench_jpeg", "cache_path", "extract",
           "prepare_extractor", "run_extractor", "source_head", "source_probs"]
