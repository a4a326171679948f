"""``folder:<path>`` datasets: an ImageFolder tree with train/ and test/ (optional val/).

Layout::

    <path>/train/<class>/<image>   (required; one folder per class, any PIL-readable image)
    <path>/val/<class>/<image>     (optional; else a seeded stratified hold-out of train)
    <path>/test/<class>/<image>    (required)

Classes are the sub-folders of train/ (sorted, as torchvision's ImageFolder numbers them); val/
and test/ are read with the same class numbering, so they may lack a class but not add one.
Every file of the split is checked up front (:func:`suite.data.files.check_image`): a corrupt
one raises a SuiteError naming it, or with ``skip_corrupt`` is dropped and listed in the
dataset's ``skipped`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from suite.data.base import DatasetInfo
from suite.data.files import FileListDataset, drop_corrupt
from suite.data.splits import stratified_holdout
from suite.errors import SuiteError

LAYOUT = ("an ImageFolder tree: <path>/train/<class>/*.jpg and <path>/test/<class>/*.jpg, "
          "optionally <path>/val/<class>/*.jpg")


def _root(path: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SuiteError(f"Dataset folder {root} does not exist.",
                         f"Point folder:<path> at {LAYOUT}.")
    for sub in ("train", "test"):
        if not (root / sub).is_dir():
            raise SuiteError(f"Dataset folder {root} has no {sub}/ sub-folder.",
                             f"Lay it out as {LAYOUT}.")
    return root.resolve()


def _classes(root: Path) -> list[str]:
    from torchvision.datasets.folder import find_classes

    try:
        classes, _ = find_classes(str(root / "train"))
    except FileNotFoundError as exc:
        raise SuiteError(f"{root / 'train'} has no class sub-folders.",
                         f"Lay it out as {LAYOUT}.") from exc
    return classes


def folder_info(path: str) -> DatasetInfo:
    """Metadata of a folder tree (reads only the directory listing)."""
    root = _root(path)
    return DatasetInfo(name=f"folder:{root}", num_classes=len(_classes(root)), metric="top1",
                       multilabel=False, has_val=(root / "val").is_dir(), kind="folder",
                       image_size=0, description=f"ImageFolder tree at {root}", paper=False)


def _samples(root: Path, sub: str, classes: list[str]) -> list[tuple[str, int]]:
    from torchvision.datasets import ImageFolder

    mapping = {c: i for i, c in enumerate(classes)}

    class _Fixed(ImageFolder):
        # Number val/test classes as train does; an extra class there is a user error.
        def find_classes(self, directory):
            found = sorted(p.name for p in Path(directory).iterdir() if p.is_dir())
            extra = [c for c in found if c not in mapping]
            if extra:
                raise SuiteError(
                    f"{Path(directory)} has class folders not in {root / 'train'}: "
                    f"{', '.join(extra[:5])}.",
                    "Every val/ and test/ class must also be a train/ class folder.")
            return classes, mapping

    try:
        ds = _Fixed(str(root / sub), allow_empty=True)
    except FileNotFoundError as exc:
        raise SuiteError(f"{root / sub} holds no images.", f"Lay it out as {LAYOUT}.") from exc
    if sub == "train" and not ds.samples:
        raise SuiteError(f"{root / 'train'} holds no images.", f"Lay it out as {LAYOUT}.")
    return list(ds.samples)


def _split(root: Path, split: str, seed: int, val_fraction: float,
           read: Callable[[str], tuple[list, list[str]]]) -> tuple[list, list[str]]:
    """(samples, skipped) of one of our splits; ``read(sub)`` gives them for a sub-folder."""
    if split == "test":
        return read("test")
    train, skipped = read("train")
    if (root / "val").is_dir():
        val, skipped_val = read("val")
        skipped = skipped + skipped_val
    else:
        tr_idx, va_idx = stratified_holdout([t for _, t in train], val_fraction, seed)
        train, val = [train[i] for i in tr_idx], [train[i] for i in va_idx]
    return {"train": train, "val": val, "trainval": train + val}[split], skipped


def load_folder(path: str, split: str, *, transform=None, seed: int = 0,
                val_fraction: float = 0.2, skip_corrupt: bool = False) -> FileListDataset:
    """One split of a folder tree as a :class:`FileListDataset` (items (image, class index))."""
    root = _root(path)
    classes = _classes(root)
    samples, skipped = _split(root, split, seed, val_fraction, lambda sub: drop_corrupt(
        _samples(root, sub, classes), skip_corrupt))
    return FileListDataset(samples, classes, transform, skipped)


def folder_samples(path: str, split: str, *, seed: int = 0,
                   val_fraction: float = 0.2) -> list[tuple[str, int]]:
    """The (file, class index) list :func:`load_folder` gives without ``skip_corrupt``, from
    the directory listing alone (no file is opened)."""
    root = _root(path)
    classes = _classes(root)
    return _split(root, split, seed, val_fraction,
                  lambda sub: (_samples(root, sub, classes), []))[0]
