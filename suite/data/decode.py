"""Where the JPEGs of an on-disk dataset are decoded when features are extracted.

Three decoders, chosen by ``suite probe --decode`` (``decode:`` in a study config):

``pil``
    PIL in the DataLoader workers, then the model's transform on the PIL image: the path every
    other stage (training, fine-tuning) takes, and the reference.
``torchvision``
    ``torchvision.io.decode_image`` in the workers, then the same transform on the uint8
    tensor. Decoding alone is 1.3–1.4× PIL on a CPU core, but the tensor resize is slower than
    PIL's: in one worker the whole pipeline measured 0.89–0.92× PIL (``benchmarks/features.md``).
``device``
    The workers only read the file bytes; each batch is decoded on the extraction device with
    ``torchvision.io.decode_jpeg`` (batched nvJPEG on CUDA) and resized, cropped and normalised
    there, image by image, before it is stacked. CPU cores are then left to file reading.

``auto`` (the default) is ``device`` when features are extracted on CUDA from image files with a
tensor-capable transform, else ``pil``.

The tensor paths need a transform that accepts uint8 tensors: torchvision's
``ImageClassification`` preset (every torchvision weights' ``transforms()``). timm's evaluation
transforms and the small CNN's take PIL images, so their models keep ``pil``.

Both tensor paths resize with antialiasing, which matches PIL's resampling to within one grey
level (measured: mean 0.0027, max 0.018 in normalised units on 375×500 JPEGs for a ResNet-50
preset), so features agree with the PIL path to rounding, not bit for bit.

A file that is not a JPEG (PNG, GIF, ...) is decoded in the worker, and a JPEG the device decoder
rejects (CMYK on some nvJPEG versions, ...) is decoded on the CPU; a file no decoder can read
raises a :class:`~suite.errors.SuiteError` naming it, as the PIL path does.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from suite.data.files import FileListDataset, corrupt_error, load_rgb
from suite.errors import SuiteError

DECODERS = ("auto", "pil", "torchvision", "device")
_JPEG_MAGIC = b"\xff\xd8\xff"


def tensor_capable(transform) -> bool:
    """Whether ``transform`` maps a uint8 (3, H, W) tensor like it maps a PIL image (torchvision's
    ``ImageClassification`` preset: resize, centre crop, to float, normalise)."""
    from torchvision.transforms._presets import ImageClassification

    return isinstance(transform, ImageClassification)


def resolve_decoder(decode: str, dataset, device: torch.device) -> str:
    """The decoder that will run (``pil``, ``torchvision`` or ``device``) for ``decode``.

    ``auto``: ``device`` on CUDA for image files with a tensor-capable transform, else ``pil``.
    Datasets held in memory (CIFAR's arrays, the synthetic sets) are never decoded: ``pil``.
    An explicit tensor decoder with a PIL-only transform is an error.
    """
    if decode not in DECODERS:
        raise SuiteError(f"Unknown JPEG decoder {decode!r}.", f"Use one of: {', '.join(DECODERS)}.")
    files = type(dataset) is FileListDataset  # ArrayImageDataset (CIFAR) subclasses it
    if not files or decode == "pil":
        return "pil"
    capable = tensor_capable(dataset.transform)
    if decode == "auto":
        return "device" if device.type == "cuda" and capable else "pil"
    if not capable:
        raise SuiteError(
            f"--decode {decode} needs a transform that accepts image tensors, but this model's "
            f"preprocessing is {type(dataset.transform).__name__}, which takes PIL images only.",
            "Use --decode pil (or auto) for this model.")
    return decode


def decode_rgb(data: torch.Tensor, path) -> torch.Tensor:
    """Encoded image bytes (1-D uint8) -> RGB uint8 (3, H, W): torchvision.io first, then PIL
    (formats torchvision lacks); a file neither can read raises a SuiteError naming ``path``."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.functional import pil_to_tensor

    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        return pil_to_tensor(load_rgb(path))  # raises corrupt_error if PIL cannot either


def read_bytes(path) -> bytes:
    """A file's bytes; an unreadable file is a SuiteError naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise corrupt_error(path, exc) from exc


def as_tensor(data: bytes) -> torch.Tensor:
    """Encoded bytes as the 1-D uint8 tensor torchvision.io decodes (one copy)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class _FilesView(torch.utils.data.Dataset):
    """The samples of a FileListDataset, read another way (subclasses define the items)."""

    def __init__(self, files: FileListDataset):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)


class TensorDecoded(_FilesView):
    """``torchvision``: items (transform(decode_rgb(file)), target) of a FileListDataset."""

    def __getitem__(self, i: int):
        path, target = self.files.samples[i]
        return self.files.transform(decode_rgb(as_tensor(read_bytes(path)), path)), target


class Encoded(_FilesView):
    """``device``: items (payload, target, path) of a FileListDataset, where the payload is the
    JPEG file's ``bytes``, or the decoded (3, H, W) uint8 image of any other format.

    Bytes, not tensors: a worker hands bytes to the main process through its pipe. A tensor
    would go through shared memory, one file descriptor per image, and torchvision's
    ``read_file`` tensors cannot be shared at all (the worker's pickling fails with EBADF and
    the DataLoader waits forever).
    """

    def __getitem__(self, i: int):
        path, target = self.files.samples[i]
        data = read_bytes(path)
        if not data.startswith(_JPEG_MAGIC):
            return decode_rgb(as_tensor(data), path), target, str(path)
        return data, target, str(path)


class EncodedBatch:
    """A batch of :class:`Encoded` payloads and their file paths (for error messages)."""

    def __init__(self, payloads: Sequence[bytes | torch.Tensor], paths: Sequence[str]):
        self.payloads = list(payloads)
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.payloads)


def collate_encoded(items) -> tuple[EncodedBatch, Any]:
    """DataLoader ``collate_fn`` of :class:`Encoded`: (EncodedBatch, collated targets)."""
    from torch.utils.data import default_collate

    payloads, targets, paths = zip(*items)
    return EncodedBatch(payloads, paths), default_collate(list(targets))


class DeviceDecoder:
    """Decode an :class:`EncodedBatch` on ``device`` and apply ``transform`` there:
    (N, 3, S, S) float32 on the device.

    JPEGs are decoded together with one batched ``decode_jpeg`` call (nvJPEG on CUDA). If the
    batch call fails, each JPEG is retried alone on the device and then on the CPU, so one odd
    file costs a slower batch, not the run; a file nothing decodes raises a SuiteError naming it.
    """

    def __init__(self, transform: Callable, device: torch.device):
        self.transform = transform
        self.device = torch.device(device)
        self.cpu_fallbacks = 0  # JPEGs the device decoder rejected (decoded on the CPU instead)
        self.warned = False

    def _decode_one(self, data: torch.Tensor, path: str) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        if self.device.type != "cpu":
            try:
                return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:
                pass
        self.cpu_fallbacks += 1
        return decode_rgb(data, path).to(self.device)

    def decode(self, batch: EncodedBatch) -> list[torch.Tensor]:
        """The batch's images, RGB uint8 (3, H, W) each, on the device."""
        from torchvision.io import ImageReadMode, decode_jpeg

        images: list[torch.Tensor | None] = [None] * len(batch)
        jpeg: dict[int, torch.Tensor] = {}
        for i, p in enumerate(batch.payloads):
            if isinstance(p, torch.Tensor):  # decoded in the worker (not a JPEG)
                images[i] = p.to(self.device, non_blocking=True)
            else:
                jpeg[i] = as_tensor(p)
        if jpeg:
            try:
                out = decode_jpeg(list(jpeg.values()), mode=ImageReadMode.RGB,
                                  device=self.device)
            except RuntimeError:
                before = self.cpu_fallbacks
                out = [self._decode_one(data, batch.paths[i]) for i, data in jpeg.items()]
                if self.cpu_fallbacks - before == len(jpeg) and not self.warned:
                    self.warned = True  # the device decoder rejects everything: say so once
                    from suite.progress import console

                    console.log(f"[yellow]The {self.device} JPEG decoder rejected a whole batch; "
                                "its images were decoded on the CPU in the main process, which "
                                "is slow. If this repeats, extract with --decode pil.[/yellow]")
            for i, image in zip(jpeg, out):
                images[i] = image
        return images  # type: ignore[return-value]

    def __call__(self, batch: EncodedBatch) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in self.decode(batch)])


def decoding_loader(dataset, decoder: str, batch_size: int, *, device: torch.device,
                    seed: int = 0, num_workers: int = -1):
    """(unshuffled loader, per-batch decode or None) of ``dataset`` for ``decoder`` (as
    :func:`resolve_decoder` returned it): the arguments :func:`suite.features.run_extractor`
    takes."""
    from suite.data.loader import make_loader

    if decoder == "torchvision":
        dataset = TensorDecoded(dataset)
    elif decoder == "device":
        loader = make_loader(Encoded(dataset), batch_size, shuffle=False, seed=seed,
                             num_workers=num_workers, collate_fn=collate_encoded)
        return loader, DeviceDecoder(dataset.transform, device)
    return make_loader(dataset, batch_size, shuffle=False, seed=seed,
                       num_workers=num_workers), None


__all__ = ["DECODERS", "DeviceDecoder", "Encoded", "EncodedBatch", "TensorDecoded", "as_tensor",
           "collate_encoded", "decode_rgb", "decoding_loader", "read_bytes", "resolve_decoder",
           "tensor_capable"]
