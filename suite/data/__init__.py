"""Datasets of the suite: built-in synthetic tasks, ImageFolder trees, and the paper's 12.

Names:

- ``synth-source``, ``synth-shapes``, ``synth-textures``, ``synth-fine``, ``synth-shift``:
  generated in memory (:mod:`suite.data.synthetic`, docs/datasets.md), no files needed;
- ``folder:/path/to/tree``: an ImageFolder tree with ``train/`` and ``test/`` (optional ``val/``)
  subfolders of one folder per class (:mod:`suite.data.folder`);
- the paper's datasets ``food101``, ``cifar10``, ``cifar100``, ``birdsnap``, ``sun397``,
  ``stanford_cars``, ``fgvc_aircraft``, ``voc2007``, ``dtd``, ``oxford_pets``, ``caltech101``,
  ``flowers102`` under a data root (:mod:`suite.data.paper`); never downloaded implicitly —
  ``suite data fetch NAME --root ROOT`` (:func:`fetch`) does that explicitly.

Splits are ``train``, ``val``, ``trainval`` (= train + val, for the refit) and ``test``. ``val`` is
the dataset's own validation split where it has one, else a seeded stratified hold-out of
``val_fraction`` of train (:mod:`suite.data.splits`).

:func:`split_fingerprint` says what a split is (its files with sizes and mtimes and labels, or
the synthetic generator's parameters) as a digest, and :func:`identity` which dataset a name
and data root denote (:mod:`suite.data.fingerprint`); the feature cache is keyed by them.
"""

from __future__ import annotations

from suite.data.base import DatasetInfo, TensorImageDataset
from suite.data.fingerprint import identity, split_fingerprint
from suite.data.loader import TensorLoader, make_loader
from suite.data.synthetic import SIZE as _SYNTH_SIZE
from suite.data.synthetic import TASKS as _SYNTH_TASKS
from suite.errors import SuiteError

SPLITS = ("train", "val", "trainval", "test")
FOLDER_PREFIX = "folder:"

SYNTHETIC: dict[str, DatasetInfo] = {
    name: DatasetInfo(name=name, num_classes=len(t.classes), metric=t.metric, multilabel=False,
                      has_val=True, kind="synthetic", image_size=_SYNTH_SIZE,
                      description=t.description, paper=False)
    for name, t in _SYNTH_TASKS.items()
}

from suite.data.paper import PAPER  # noqa: E402  (needs DatasetInfo above)

DATASETS: dict[str, DatasetInfo] = {**SYNTHETIC, **PAPER}


def _unknown(name: str) -> SuiteError:
    import difflib

    close = difflib.get_close_matches(name, list(DATASETS), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return SuiteError(
        f"Unknown dataset {name!r}.{hint}",
        f"Use one of: {', '.join(DATASETS)}; or folder:/path/to/tree for an ImageFolder tree "
        "with train/ and test/ (optional val/) subfolders (`suite data list` shows them).")


def get_info(name: str, root: str = "") -> DatasetInfo:
    """Metadata of a dataset by name (``folder:`` trees are inspected on disk)."""
    if name.startswith(FOLDER_PREFIX):
        from suite.data.folder import folder_info

        return folder_info(name[len(FOLDER_PREFIX):])
    if name not in DATASETS:
        raise _unknown(name)
    return DATASETS[name]


def load_split(name: str, split: str, *, root: str = "", transform=None, seed: int = 0,
               val_fraction: float = 0.2, skip_corrupt: bool = False):
    """One split of a dataset as a torch Dataset of (image (3, H, W) float tensor, label).

    Synthetic sets return a :class:`TensorImageDataset` (their data does not depend on ``seed``);
    ``seed`` and ``val_fraction`` define the hold-out of datasets without their own val split.
    Never downloads.
    """
    if split not in SPLITS:
        raise SuiteError(f"Unknown split {split!r} of dataset {name!r}.",
                         f"Use one of: {', '.join(SPLITS)}.")
    if not 0.0 < val_fraction < 1.0:
        raise SuiteError(f"val_fraction={val_fraction} is outside (0, 1).",
                         "Pass a fraction of train to hold out for validation, e.g. 0.2.")
    if name.startswith(FOLDER_PREFIX):
        from suite.data.folder import load_folder

        return load_folder(name[len(FOLDER_PREFIX):], split, transform=transform, seed=seed,
                           val_fraction=val_fraction, skip_corrupt=skip_corrupt)
    if name in SYNTHETIC:
        from suite.data import synthetic

        return synthetic.load(name, split, transform=transform)
    if name in PAPER:
        from suite.data.paper import load_paper

        return load_paper(name, split, root=root, transform=transform, seed=seed,
                          val_fraction=val_fraction, skip_corrupt=skip_corrupt)
    raise _unknown(name)


def fetch(name: str, root: str) -> str:
    """Download a paper dataset under ``root`` through torchvision (the only place that does);
    returns a one-line summary of what is there now."""
    from suite.data.fetch import fetch as _fetch

    return _fetch(name, root)


def list_datasets(root: str = "") -> list[dict]:
    """Rows for ``suite data list``: name, kind, present, classes, sizes, metric, description."""
    from suite.data.fetch import list_datasets as _list

    return _list(root)


__all__ = ["DATASETS", "SPLITS", "DatasetInfo", "TensorImageDataset", "TensorLoader", "fetch",
           "get_info", "identity", "list_datasets", "load_split", "make_loader",
           "split_fingerprint"]
