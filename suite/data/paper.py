"""The paper's 12 datasets, read from a data root with ``download=False`` (never downloads).

Each dataset is first *indexed* — its classes and the ``(file, target)`` lists of the splits it
ships, read from annotation files and directory listings without decoding any image — then
wrapped in a :class:`~suite.data.files.FileListDataset` (CIFAR: an in-memory array dataset).

=============  ==========================================  =====  ===============  ==============
name           read by (layout under ROOT)                 k      val              metric
=============  ==========================================  =====  ===============  ==============
food101        torchvision Food101 (food-101/)             101    hold-out         top1
cifar10        own pickle reader (cifar-10-batches-py/)    10     hold-out         top1
cifar100       own pickle reader (cifar-100-python/)       100    hold-out         top1
birdsnap       ImageFolder tree (birdsnap/train, test)     500    val/ or hold-o.  top1
sun397         own reader (SUN397/ + Training_01.txt,      397    hold-out         top1
               Testing_01.txt of the official partitions)
stanford_cars  torchvision StanfordCars (stanford_cars/)   196    hold-out         top1
fgvc_aircraft  torchvision FGVCAircraft, variant level     100    own (val)        mean_per_class
               (fgvc-aircraft-2013b/)
voc2007        torchvision VOCDetection 2007 + XML         20     own (val)        map11
               (VOCdevkit/VOC2007/)
dtd            torchvision DTD, partition 1 (dtd/dtd/)     47     own (val1)       top1
oxford_pets    torchvision OxfordIIITPet (oxford-iiit-pet) 37     hold-out of      mean_per_class
                                                                  trainval
caltech101     own reader (caltech101/101_ObjectCategories) 102   hold-out         mean_per_class
flowers102     own reader (flowers-102/: jpg/,             102    own (valid)      mean_per_class
               imagelabels.mat, setid.mat)
=============  ==========================================  =====  ===============  ==============

Why some are read without torchvision's class: its CIFAR and Flowers102 loaders verify the md5 of
the extracted files (so any re-packed or test copy fails); its Caltech101 drops the
``BACKGROUND_Google`` class the paper counts (102 classes), creates folders under the root and
returns non-RGB images; its SUN397 globs every file and has no train/test partition, while the
paper uses the first official one (``Training_01.txt`` / ``Testing_01.txt``).

Caltech-101 follows the paper: 30 training images per class drawn with the fixed seed
:data:`CALTECH_SPLIT_SEED` (so every model and study seed sees the same test set), the rest test.
VOC2007 labels are (20,) 0/1 float vectors: a class is positive when the image's XML annotation
has at least one object of it (difficult ones included).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from suite.data.base import DatasetInfo
from suite.data.files import FileListDataset, drop_corrupt, load_rgb
from suite.data.splits import per_class_draw, stratified_holdout
from suite.errors import SuiteError

CALTECH_SPLIT_SEED = 0
CALTECH_TRAIN_PER_CLASS = 30
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


def _info(name, k, metric, has_val, description, kind="torchvision", multilabel=False):
    return DatasetInfo(name=name, num_classes=k, metric=metric, multilabel=multilabel,
                       has_val=has_val, kind=kind, image_size=0, description=description,
                       paper=True)


PAPER: dict[str, DatasetInfo] = {
    "food101": _info("food101", 101, "top1", False, "Food-101: 101 dishes, 75,750 train / "
                     "25,250 test."),
    "cifar10": _info("cifar10", 10, "top1", False, "CIFAR-10: 32x32 objects, 50,000 / 10,000."),
    "cifar100": _info("cifar100", 100, "top1", False, "CIFAR-100: 32x32 objects, 50,000 / "
                      "10,000."),
    "birdsnap": _info("birdsnap", 500, "top1", False, "Birdsnap: 500 North American bird "
                      "species (user-provided ImageFolder tree).", kind="folder"),
    "sun397": _info("sun397", 397, "top1", False, "SUN397 scenes, first official partition: "
                    "19,850 / 19,850."),
    "stanford_cars": _info("stanford_cars", 196, "top1", False, "Stanford Cars: 196 models, "
                           "8,144 / 8,041."),
    "fgvc_aircraft": _info("fgvc_aircraft", 100, "mean_per_class", True, "FGVC Aircraft: 100 "
                           "variants, 3,334 train / 3,333 val / 3,333 test."),
    "voc2007": _info("voc2007", 20, "map11", True, "PASCAL VOC2007 classification "
                     "(multi-label): 2,501 train / 2,510 val / 4,952 test.", multilabel=True),
    "dtd": _info("dtd", 47, "top1", True, "Describable Textures, partition 1: 1,880 train / "
                 "1,880 val / 1,880 test."),
    "oxford_pets": _info("oxford_pets", 37, "mean_per_class", False, "Oxford-IIIT Pets: 37 "
                         "breeds, 3,680 trainval / 3,669 test."),
    "caltech101": _info("caltech101", 102, "mean_per_class", False, "Caltech-101 (with the "
                        "background class): 30 train images per class, the rest test."),
    "flowers102": _info("flowers102", 102, "mean_per_class", True, "Oxford 102 Flowers: "
                        "1,020 train / 1,020 val / 6,149 test."),
}

# ImageNet (ILSVRC-2012) as a *source* for `suite pretrain --source imagenet` at full scale: the
# user's own copy, as an ImageFolder tree <root>/imagenet/{train,val}/<wnid>/*.JPEG. The official
# validation set is the test split (the labels of ILSVRC's test set are not public), and the
# validation split is a seeded stratified hold-out of train. Not one of the 12 targets.
PAPER["imagenet"] = DatasetInfo(
    name="imagenet", num_classes=1000, metric="top1", multilabel=False, has_val=False,
    kind="folder", image_size=0, paper=False,
    description="ILSVRC-2012 (user-provided: imagenet/train/<wnid>/, imagenet/val/<wnid>/; "
                "val is the test split). A pretraining source, not a target.")

# Where each dataset lives under the root (checked before any loader runs).
LOCATIONS: dict[str, str] = {
    "food101": "food-101", "cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python",
    "birdsnap": "birdsnap", "sun397": "SUN397", "stanford_cars": "stanford_cars",
    "fgvc_aircraft": "fgvc-aircraft-2013b", "voc2007": "VOCdevkit/VOC2007", "dtd": "dtd/dtd",
    "oxford_pets": "oxford-iiit-pet", "caltech101": "caltech101/101_ObjectCategories",
    "flowers102": "flowers-102", "imagenet": "imagenet",
}


@dataclass
class Index:
    """Classes and the shipped splits of a dataset: split -> [(key, target)].

    ``key`` is a file path, or an int row of ``arrays`` for in-memory sets (CIFAR).
    """

    classes: list[str]
    splits: dict[str, list]
    arrays: np.ndarray | None = None  # (N, H, W, 3) uint8 for CIFAR (train rows, then test)
    files: bool = True  # keys are files (corrupt checks apply)
    extra: dict = field(default_factory=dict)


def missing_error(name: str, root, detail: str = "") -> SuiteError:
    where = Path(root) / LOCATIONS[name] if root else LOCATIONS[name]
    if name == "imagenet":
        return SuiteError(
            f"ImageNet (ILSVRC-2012) was not found at {where}{detail}. It cannot be downloaded "
            "automatically (its licence requires registration).",
            f"Put your copy at {where} as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the "
            "validation images sorted into class folders, e.g. with the common valprep.sh).")
    if name == "birdsnap":
        return SuiteError(
            f"Dataset birdsnap was not found at {where}{detail}. Birdsnap has no torchvision "
            "loader; its images are fetched from their original URLs with the dataset's own "
            "script.",
            f"Put it at {where} as an ImageFolder tree: train/<species>/*.jpg and "
            "test/<species>/*.jpg (optional val/). `suite data fetch birdsnap --root "
            f"{root or 'ROOT'}` explains the steps.")
    return SuiteError(f"Dataset {name} was not found at {where}{detail}.",
                      f"Download it explicitly with `suite data fetch {name} --root "
                      f"{root or 'ROOT'}` (or point --data-root at the folder that holds it).")


def _root(name: str, root: str) -> Path:
    if not root:
        raise SuiteError(f"Dataset {name} is read from a data root, but none was given.",
                         f"Pass --data-root ROOT (the folder that holds {LOCATIONS[name]}/); "
                         f"`suite data fetch {name} --root ROOT` downloads it there.")
    base = Path(root).expanduser()
    if not (base / LOCATIONS[name]).exists():
        raise missing_error(name, base)
    return base


def _torchvision(name: str, root: Path, cls: Callable, **kwargs):
    """Instantiate a torchvision dataset with download=False; its errors become SuiteErrors."""
    try:
        return cls(str(root), download=False, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError, KeyError, ValueError) as exc:
        raise missing_error(name, root, f" or is incomplete ({type(exc).__name__}: {exc})") \
            from exc


# --------------------------------------------------------------------------------- indexers


def _index_food101(root: Path) -> Index:
    from torchvision.datasets import Food101

    splits, classes = {}, []
    for split in ("train", "test"):
        ds = _torchvision("food101", root, Food101, split=split)
        splits[split] = [(str(p), int(t)) for p, t in zip(ds._image_files, ds._labels)]
        classes = ds.classes
    return Index(classes, splits)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _index_cifar(name: str, root: Path) -> Index:
    # The python-pickle layout torchvision extracts: rows of 3072 bytes (R, G, B planes of 32x32).
    base = root / LOCATIONS[name]
    if name == "cifar10":
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, meta_file, meta_key, label_key = ["test_batch"], "batches.meta", \
            "label_names", "labels"
    else:
        train_files, test_files, meta_file, meta_key, label_key = ["train"], ["test"], "meta", \
            "fine_label_names", "fine_labels"
    try:
        classes = list(_unpickle(base / meta_file)[meta_key])
        parts = {}
        for split, files in (("train", train_files), ("test", test_files)):
            data, labels = [], []
            for fname in files:
                entry = _unpickle(base / fname)
                data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(int(t) for t in entry[label_key])
            parts[split] = (np.concatenate(data).transpose(0, 2, 3, 1), labels)  # (n, 32, 32, 3)
    except (OSError, KeyError, pickle.UnpicklingError, ValueError, EOFError) as exc:
        raise missing_error(name, root, f" or is incomplete ({type(exc).__name__}: {exc})") \
            from exc
    n_train = len(parts["train"][1])
    arrays = np.concatenate([parts["train"][0], parts["test"][0]])
    splits = {"train": list(zip(range(n_train), parts["train"][1])),
              "test": list(zip(range(n_train, arrays.shape[0]), parts["test"][1]))}
    return Index(classes, splits, arrays=arrays, files=False)


def _index_sun397(root: Path) -> Index:
    base = root / "SUN397"
    try:
        with open(base / "ClassName.txt") as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as exc:
        raise missing_error("sun397", root, " (no ClassName.txt)") from exc
    classes = [c[3:] for c in names]  # "/a/abbey" -> "abbey", as torchvision names them
    to_idx = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, fname in (("train", "Training_01.txt"), ("test", "Testing_01.txt")):
        path = next((p for p in (base / fname, base / "Partitions" / fname) if p.exists()), None)
        if path is None:
            raise SuiteError(
                f"SUN397 at {base} has no {fname} (the paper's first train/test partition).",
                "Download Partitions.zip from https://vision.princeton.edu/projects/2010/SUN/ "
                f"and extract Training_01.txt and Testing_01.txt into {base}.")
        with open(path) as f:
            rows = [line.strip() for line in f if line.strip()]
        # "/a/abbey/sun_x.jpg": class = the folders below the letter.
        splits[split] = [(str(base / r.lstrip("/")), to_idx["/".join(r.split("/")[2:-1])])
                         for r in rows]
    return Index(classes, splits)


def _index_stanford_cars(root: Path) -> Index:
    from torchvision.datasets import StanfordCars

    splits, classes = {}, []
    for split in ("train", "test"):
        ds = _torchvision("stanford_cars", root, StanfordCars, split=split)
        splits[split] = [(str(p), int(t)) for p, t in ds._samples]
        classes = list(ds.classes)
    return Index(classes, splits)


def _index_fgvc_aircraft(root: Path) -> Index:
    from torchvision.datasets import FGVCAircraft

    splits, classes = {}, []
    for split in ("train", "val", "test"):
        ds = _torchvision("fgvc_aircraft", root, FGVCAircraft, split=split,
                          annotation_level="variant")
        splits[split] = [(str(p), int(t)) for p, t in zip(ds._image_files, ds._labels)]
        classes = list(ds.classes)
    return Index(classes, splits)


def voc_labels(xml_path) -> torch.Tensor:
    """(20,) float 0/1: classes with at least one object in a VOC XML annotation."""
    import xml.etree.ElementTree as ET

    y = torch.zeros(len(VOC_CLASSES))
    for obj in ET.parse(xml_path).getroot().iter("object"):
        y[VOC_CLASSES.index(obj.findtext("name").strip())] = 1.0
    return y


def _index_voc2007(root: Path) -> Index:
    from torchvision.datasets import VOCDetection

    splits = {}
    for split in ("train", "val", "test"):
        ds = _torchvision("voc2007", root, VOCDetection, year="2007", image_set=split)
        try:
            splits[split] = [(img, voc_labels(xml)) for img, xml in zip(ds.images, ds.targets)]
        except (OSError, ValueError) as exc:
            raise missing_error("voc2007", root, f" or is incomplete ({exc})") from exc
    return Index(list(VOC_CLASSES), splits)


def _index_dtd(root: Path) -> Index:
    from torchvision.datasets import DTD

    splits, classes = {}, []
    for split in ("train", "val", "test"):
        ds = _torchvision("dtd", root, DTD, split=split, partition=1)
        splits[split] = [(str(p), int(t)) for p, t in zip(ds._image_files, ds._labels)]
        classes = ds.classes
    return Index(classes, splits)


def _index_oxford_pets(root: Path) -> Index:
    from torchvision.datasets import OxfordIIITPet

    splits, classes = {}, []
    for ours, theirs in (("train", "trainval"), ("test", "test")):
        ds = _torchvision("oxford_pets", root, OxfordIIITPet, split=theirs)
        splits[ours] = [(str(p), int(t)) for p, t in zip(ds._images, ds._labels)]
        if ours == "train":
            classes = ds.classes
    return Index(classes, splits)


def _index_caltech101(root: Path) -> Index:
    base = root / LOCATIONS["caltech101"]
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    samples = []
    for i, c in enumerate(classes):
        files = sorted(p for p in (base / c).iterdir() if p.suffix.lower() == ".jpg")
        samples += [(str(p), i) for p in files]
    if not samples:
        raise missing_error("caltech101", root, " (no images)")
    chosen, rest = per_class_draw([t for _, t in samples], CALTECH_TRAIN_PER_CLASS,
                                  CALTECH_SPLIT_SEED)
    return Index(classes, {"train": [samples[i] for i in chosen],
                           "test": [samples[i] for i in rest]})


def _index_flowers102(root: Path) -> Index:
    from scipy.io import loadmat

    from torchvision.datasets import Flowers102

    base = root / "flowers-102"
    try:
        setid = loadmat(base / "setid.mat", squeeze_me=True)
        labels = loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise missing_error("flowers102", root, f" or is incomplete ({exc})") from exc
    splits = {}
    for ours, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        ids = np.atleast_1d(setid[key]).tolist()
        splits[ours] = [(str(base / "jpg" / f"image_{i:05d}.jpg"), int(labels[i - 1]) - 1)
                        for i in ids]
    return Index(list(Flowers102.classes), splits)


def _index_birdsnap(root: Path) -> Index:
    from suite.data.folder import _classes, _root, _samples

    tree = _root(str(root / "birdsnap"))
    classes = _classes(tree)
    splits = {s: _samples(tree, s, classes) for s in ("train", "val", "test")
              if (tree / s).is_dir()}
    return Index(classes, splits)


def _index_imagenet(root: Path) -> Index:
    from suite.data.folder import _classes, _samples

    tree = root / "imagenet"
    for sub in ("train", "val"):
        if not (tree / sub).is_dir():
            raise missing_error("imagenet", root, f" (no {sub}/ folder)")
    classes = _classes(tree)
    return Index(classes, {"train": _samples(tree, "train", classes),
                           "test": _samples(tree, "val", classes)})


INDEXERS: dict[str, Callable[[Path], Index]] = {
    "imagenet": _index_imagenet,
    "food101": _index_food101,
    "cifar10": lambda root: _index_cifar("cifar10", root),
    "cifar100": lambda root: _index_cifar("cifar100", root),
    "birdsnap": _index_birdsnap,
    "sun397": _index_sun397,
    "stanford_cars": _index_stanford_cars,
    "fgvc_aircraft": _index_fgvc_aircraft,
    "voc2007": _index_voc2007,
    "dtd": _index_dtd,
    "oxford_pets": _index_oxford_pets,
    "caltech101": _index_caltech101,
    "flowers102": _index_flowers102,
}


def index(name: str, root: str) -> Index:
    """Index a paper dataset under ``root`` (no image decoding); SuiteError when missing."""
    return INDEXERS[name](_root(name, root))


def split_samples(idx: Index, split: str, *, seed: int, val_fraction: float) -> list:
    """The (key, target) list of one of our splits: own val where shipped, else a hold-out."""
    if split == "test":
        return idx.splits["test"]
    train = idx.splits["train"]
    if "val" in idx.splits:
        val = idx.splits["val"]
    else:
        targets = [t.numpy() if torch.is_tensor(t) else t for _, t in train]
        tr, va = stratified_holdout(np.asarray(targets), val_fraction, seed)
        train, val = [train[i] for i in tr], [train[i] for i in va]
    return {"train": train, "val": val, "trainval": train + val}[split]


class ArrayImageDataset(FileListDataset):
    """In-memory uint8 images (CIFAR): samples are (row, label) into ``arrays`` (N, H, W, 3)."""

    def __init__(self, arrays, samples, classes, transform=None):
        super().__init__(samples, classes, transform)
        self.arrays = arrays

    def __getitem__(self, i: int):
        row, target = self.samples[i]
        return self.transform(Image.fromarray(self.arrays[row])), target

    def subset(self, indices):
        return ArrayImageDataset(self.arrays, [self.samples[int(i)] for i in indices],
                                 self.classes, self.transform)


def load_paper(name: str, split: str, *, root: str, transform=None, seed: int = 0,
               val_fraction: float = 0.2, skip_corrupt: bool = False) -> FileListDataset:
    """One split of a paper dataset. Never downloads.

    Images are decoded lazily (a corrupt file raises a SuiteError naming it when first read);
    with ``skip_corrupt`` every file of the split is checked up front and the bad ones are
    dropped and listed in ``.skipped``.
    """
    idx = index(name, root)
    samples = split_samples(idx, split, seed=seed, val_fraction=val_fraction)
    if not idx.files:
        return ArrayImageDataset(idx.arrays, samples, idx.classes, transform)
    skipped: list[str] = []
    if skip_corrupt:
        samples, skipped = drop_corrupt(samples, skip_corrupt=True)
    return FileListDataset(samples, idx.classes, transform, skipped)


__all__ = ["PAPER", "LOCATIONS", "Index", "index", "load_paper", "load_rgb", "missing_error",
           "split_samples", "voc_labels"]
