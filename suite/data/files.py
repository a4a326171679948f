"""Datasets of image files on disk: decoding, corrupt-file checks, the default transform.

Every on-disk dataset (ImageFolder trees and the paper's datasets) ends up as a
:class:`FileListDataset`: a list of ``(path, target)`` pairs whose images are decoded with PIL
(RGB) and passed through ``transform``. A file that cannot be decoded raises a
:class:`~suite.errors.SuiteError` naming the file.

Corrupt files are found cheaply up front by :func:`find_corrupt` (header parse + PIL ``verify``
+ the end-of-image marker of JPEG/PNG, without decoding pixels), so that ``skip_corrupt`` can
drop them before training rather than in the middle of an epoch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from suite.errors import SuiteError

# ImageNet statistics: on-disk datasets feed ImageNet-style networks unless a transform says else.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
SKIP_HINT = "or pass --skip-corrupt to skip unreadable images (they are listed in the log)."


def default_transform(image_size: int = DEFAULT_IMAGE_SIZE) -> Callable:
    """Resize the short side to 8/7 of ``image_size``, centre-crop, to tensor, ImageNet-normalise.

    Used when ``load_split`` gets ``transform=None``, so items are always normalised float
    tensors (3, image_size, image_size) that batch together.
    """
    from torchvision import transforms as T

    return T.Compose([T.Resize(image_size * 8 // 7), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def corrupt_error(path, exc: BaseException | None = None) -> SuiteError:
    why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return SuiteError(f"Image file {path} is corrupt or truncated and cannot be decoded{why}.",
                      f"Replace or delete {path}, {SKIP_HINT}")


def _trailer_ok(path: Path, fmt: str | None) -> bool:
    """JPEG must end with the EOI marker (FF D9), PNG with its IEND chunk (truncation checks).

    Looks at the last 4 KiB so that padding some encoders append after the marker is tolerated.
    """
    if fmt not in ("JPEG", "PNG"):
        return True
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 4096))
        tail = f.read()
    return (b"\xff\xd9" in tail) if fmt == "JPEG" else (b"IEND" in tail)


def check_image(path) -> BaseException | None:
    """None if ``path`` looks like a complete image (no pixel decoding), else the reason."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        if not _trailer_ok(path, fmt):
            return OSError("image data ends early (missing end-of-image marker)")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return exc
    return None


def find_corrupt(paths: Sequence) -> list[str]:
    """The paths among ``paths`` that :func:`check_image` rejects, in order."""
    return [str(p) for p in paths if check_image(p) is not None]


def load_rgb(path) -> Image.Image:
    """Decode an image file to RGB; a decoding failure is a SuiteError naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise corrupt_error(path, exc) from exc


class FileListDataset(torch.utils.data.Dataset):
    """(image, target) from a list of files: ``samples`` [(path, target)], ``classes`` [str].

    ``targets`` are class indices (int) or, for multi-label sets, float tensors (k,) of 0/1.
    ``skipped`` lists the corrupt files that were dropped (``skip_corrupt``), for the caller to
    log.
    """

    def __init__(self, samples: list[tuple[str, object]], classes: Sequence[str],
                 transform: Callable | None = None, skipped: Sequence[str] = ()):
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform if transform is not None else default_transform()
        self.skipped = list(skipped)

    @property
    def targets(self) -> list:
        return [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        image = self.transform(load_rgb(path))
        return image, target

    def subset(self, indices) -> "FileListDataset":
        """A dataset of the samples at ``indices`` (same classes, transform, skipped list)."""
        return FileListDataset([self.samples[int(i)] for i in indices], self.classes,
                               self.transform, self.skipped)


def drop_corrupt(samples: list[tuple[str, object]], skip_corrupt: bool
                 ) -> tuple[list[tuple[str, object]], list[str]]:
    """Check every file up front; raise on the first corrupt one, or drop them all when skipping.

    Returns (kept samples, skipped paths).
    """
    bad: list[str] = []
    for path, _ in samples:
        exc = check_image(path)
        if exc is not None:
            if not skip_corrupt:
                raise corrupt_error(path, exc)
            bad.append(str(path))
    if not bad:
        return samples, []
    bad_set = set(bad)
    return [s for s in samples if str(s[0]) not in bad_set], bad


def log_skipped(datasets: Sequence, what: str) -> list[str]:
    """Report the corrupt files ``skip_corrupt`` dropped from ``datasets`` (their ``skipped``):
    a console line, and inside an active MLflow run the full list as the artifact
    ``skipped_images/<what>.txt`` (a folder: dataset by its folder's name). Returns the sorted
    paths (none: nothing is logged)."""
    paths = sorted({str(p) for ds in datasets for p in getattr(ds, "skipped", ())})
    if not paths:
        return paths
    import mlflow

    from suite.progress import console

    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    console.log(f"[yellow]--skip-corrupt: skipped {len(paths)} unreadable image(s) of {what}: "
                f"{shown}[/yellow]")
    if mlflow.active_run() is not None:
        from suite.tracking import safe_name

        name = safe_name(what.rstrip("/").rsplit("/", 1)[-1])  # folder:/a/b/tree -> tree
        mlflow.log_text("\n".join(paths) + "\n", f"skipped_images/{name}.txt")
    return paths


def count_files(folder, exts: tuple[str, ...] = ()) -> int:
    """Number of files under ``folder`` (recursively), optionally only with these extensions."""
    n = 0
    for _, _, files in os.walk(folder):
        n += sum(1 for f in files if not exts or f.lower().endswith(exts))
    return n
