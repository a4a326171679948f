"""``suite data fetch`` / ``suite data list``: the only code that downloads, and the catalogue.

:func:`fetch` downloads one paper dataset through its torchvision loader (``download=True``)
under a root; it is never called implicitly. :func:`list_datasets` reports which datasets are
present under a root and their split sizes from annotations and listings (no image decoding).
"""

from __future__ import annotations

from pathlib import Path

from suite.data.base import DatasetInfo
from suite.data.paper import LOCATIONS, PAPER, index, split_samples
from suite.data.synthetic import TASKS
from suite.errors import SuiteError

SUN397_PARTITIONS_URL = "https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip"


def _offline_error(name: str, root: Path, exc: BaseException) -> SuiteError:
    return SuiteError(
        f"Could not download {name} into {root} ({type(exc).__name__}: {exc}); the machine may "
        "be offline or the host unreachable.",
        f"Run `suite data fetch {name} --root ROOT` on a machine with internet access and copy "
        f"ROOT/{LOCATIONS[name]} to {root / LOCATIONS[name]}.")


def _download(name: str, root: Path) -> None:
    from torchvision import datasets as tvd

    r = str(root)
    if name == "food101":
        tvd.Food101(r, download=True)
    elif name == "cifar10":
        tvd.CIFAR10(r, download=True)
    elif name == "cifar100":
        tvd.CIFAR100(r, download=True)
    elif name == "sun397":
        from torchvision.datasets.utils import download_and_extract_archive

        tvd.SUN397(r, download=True)
        download_and_extract_archive(SUN397_PARTITIONS_URL, str(root / "SUN397"))
    elif name == "fgvc_aircraft":
        tvd.FGVCAircraft(r, download=True)
    elif name == "voc2007":
        tvd.VOCDetection(r, year="2007", image_set="trainval", download=True)
        tvd.VOCDetection(r, year="2007", image_set="test", download=True)
    elif name == "dtd":
        tvd.DTD(r, download=True)
    elif name == "oxford_pets":
        tvd.OxfordIIITPet(r, download=True)
    elif name == "caltech101":
        tvd.Caltech101(r, download=True)  # needs the gdown package
    elif name == "flowers102":
        tvd.Flowers102(r, download=True)
    else:  # pragma: no cover - guarded by fetch
        raise AssertionError(name)


def fetch(name: str, root: str) -> str:
    """Download ``name`` under ``root``; returns a one-line summary of what is there now."""
    if name in TASKS:
        return f"{name} is generated in memory; there is nothing to download."
    if name not in PAPER:
        from suite.data import _unknown

        raise _unknown(name)
    if not root:
        raise SuiteError(f"No root folder was given to download {name} into.",
                         f"Pass --root ROOT, e.g. `suite data fetch {name} --root ~/data`.")
    base = Path(root).expanduser()
    if name == "imagenet":
        from suite.data.paper import missing_error

        raise missing_error("imagenet", base, " and is never downloaded by suite")
    if name == "birdsnap":
        raise SuiteError(
            "Birdsnap cannot be downloaded by torchvision: its images are fetched from the "
            "original URLs listed in the dataset's images.txt by the official get_birdsnap.py "
            "script (https://thomasberg.org), and some are no longer online.",
            f"Run that script, then arrange the images as an ImageFolder tree at "
            f"{base / 'birdsnap'}: train/<species>/*.jpg and test/<species>/*.jpg (test = the "
            "official test.txt list; optional val/).")
    if name == "stanford_cars":
        raise SuiteError(
            "Stanford Cars can no longer be downloaded automatically (the original URL is gone; "
            "torchvision's download raises).",
            f"Get cars_train/, cars_test/, devkit/ and cars_test_annos_withlabels.mat from a "
            f"mirror and put them in {base / 'stanford_cars'}.")
    base.mkdir(parents=True, exist_ok=True)
    try:
        _download(name, base)
    except ModuleNotFoundError as exc:  # Caltech101's Google Drive download needs gdown
        raise SuiteError(f"Downloading {name} needs the Python package {exc.name!r}.",
                         f"Install it (pip install {exc.name}) and rerun the fetch.") from exc
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        raise _offline_error(name, base, exc) from exc
    idx = index(name, str(base))
    sizes = ", ".join(f"{k} {len(v)}" for k, v in idx.splits.items())
    return f"{name} is ready at {base / LOCATIONS[name]} ({len(idx.classes)} classes; {sizes})."


def _row(info: DatasetInfo, present: bool, location: str, sizes=None, problem: str = "") -> dict:
    sizes = sizes or {}
    return {"name": info.name, "kind": info.kind, "present": present,
            "classes": info.num_classes, "train": sizes.get("train"), "val": sizes.get("val"),
            "test": sizes.get("test"), "metric": info.metric, "description": info.description,
            "location": location, "problem": problem}


def list_datasets(root: str = "", *, seed: int = 0, val_fraction: float = 0.2) -> list[dict]:
    """One row per built-in dataset: name, kind, present, classes, train/val/test sizes, metric,
    description, location, problem (why a present-looking folder could not be indexed).

    Sizes of paper datasets are those of our splits (train after the validation hold-out where
    the dataset has no val split), counted from annotations and listings without decoding.
    """
    from suite.data import SYNTHETIC

    rows = []
    for name, info in SYNTHETIC.items():
        per = TASKS[name].per_class
        k = info.num_classes
        rows.append(_row(info, True, "built-in", {s: per[s] * k for s in per}))
    base = Path(root).expanduser() if root else None
    for name, info in PAPER.items():
        location = str(base / LOCATIONS[name]) if base else LOCATIONS[name]
        if base is None or not (base / LOCATIONS[name]).exists():
            rows.append(_row(info, False, location))
            continue
        try:
            idx = index(name, str(base))
            sizes = {s: len(split_samples(idx, s, seed=seed, val_fraction=val_fraction))
                     for s in ("train", "val", "test")}
            rows.append(_row(info, True, location, sizes))
        except SuiteError as exc:
            rows.append(_row(info, False, location, problem=exc.message))
    return rows
