"""Tiny fakes of the paper datasets' real on-disk layouts (shared by the data and study tests),
and a registered checkpoint in one call.

Each ``fake_NAME(root)`` writes the files torchvision's loader (or the suite's own reader) looks
for under ``root`` and returns ``root``. Images are small random JPEGs (:func:`write_jpg`).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
from PIL import Image


def write_jpg(path, seed=0, size=(10, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG")



def fake_cifar(root, hundred=False, per_batch=6):
    rng = np.random.default_rng(0)
    k = 100 if hundred else 10
    base = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    base.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"

    def dump(name, obj):
        with open(base / name, "wb") as f:
            pickle.dump(obj, f)

    files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    for name in files + ["test"] if hundred else files + ["test_batch"]:
        n = per_batch * (5 if hundred and name == "train" else 1)
        dump(name, {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    key: [int(i % k) for i in range(n)]})
    if hundred:
        dump("meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    else:
        dump("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return root


def fake_dtd(root):
    base = root / "dtd" / "dtd"
    rows = {"train": [], "val": [], "test": []}
    for c in ("banded", "dotted"):
        for i in range(6):
            write_jpg(base / "images" / c / f"{c}_{i}.jpg", i)
            rows[("train", "val", "test")[i % 3]].append(f"{c}/{c}_{i}.jpg")
    (base / "labels").mkdir(parents=True)
    for s, r in rows.items():
        (base / "labels" / f"{s}1.txt").write_text("\n".join(r) + "\n")
    return root


def fake_pets(root):
    base = root / "oxford-iiit-pet"
    rows = {"trainval": [], "test": []}
    for label, breed in ((1, "Abyssinian"), (2, "american_bulldog")):
        for i in range(1, 9):
            write_jpg(base / "images" / f"{breed}_{i}.jpg", i)
            rows["trainval" if i <= 5 else "test"].append(f"{breed}_{i} {label} {label} 1")
    (base / "annotations").mkdir(parents=True)
    for s, r in rows.items():
        (base / "annotations" / f"{s}.txt").write_text("\n".join(r) + "\n")
    return root


def fake_flowers(root, labels=(1, 2, 1, 2, 1, 2, 1, 2, 102, 102)):
    from scipy.io import savemat

    base = root / "flowers-102"
    labels = np.array(labels)
    for i in range(1, 11):
        write_jpg(base / "jpg" / f"image_{i:05d}.jpg", i)
    savemat(base / "imagelabels.mat", {"labels": labels})
    savemat(base / "setid.mat", {"trnid": np.array([1, 2, 9]), "valid": np.array([3, 4]),
                                 "tstid": np.array([5, 6, 7, 8, 10])})
    return root


def fake_caltech(root, per_class=33):
    base = root / "caltech101" / "101_ObjectCategories"
    for c in ("BACKGROUND_Google", "accordion"):
        for i in range(1, per_class + 1):
            write_jpg(base / c / f"image_{i:04d}.jpg", i, size=(4, 4))
    return root


def fake_fgvc(root):
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4"]
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 0
    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        rows = []
        for i in range(count):
            v = variants[i % 2]
            write_jpg(data / "images" / f"{1000000 + n}.jpg", n)
            rows.append(f"{1000000 + n} {v}")
            n += 1
        (data / f"images_variant_{split}.txt").write_text("\n".join(rows) + "\n")
    return root


VOC_OBJECTS = {"000001": ["dog", "person"], "000002": ["car"], "000003": ["cat", "cat"],
               "000004": ["person"], "000005": ["bird", "car"], "000006": ["dog"]}


VOC_SPLITS = {"train": ["000001", "000002"], "val": ["000003"],
              "test": ["000004", "000005", "000006"]}


def fake_voc(root, objects=VOC_OBJECTS, splits=VOC_SPLITS):
    base = root / "VOCdevkit" / "VOC2007"
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    for stem, objs in objects.items():
        write_jpg(base / "JPEGImages" / f"{stem}.jpg", int(stem))
        xml = "".join(f"<object><name>{o}</name><difficult>0</difficult></object>" for o in objs)
        (base / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename>{xml}</annotation>")
    for split, stems in splits.items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def fake_voc_all_classes(root):
    """VOC2007 with every one of the 20 classes positive in train (a probe needs that)."""
    from suite.data.paper import VOC_CLASSES

    objects, splits = {}, {"train": [], "val": [], "test": []}
    for i, name in enumerate(VOC_CLASSES + VOC_CLASSES[:6]):
        stem = f"{i + 1:06d}"
        objects[stem] = [name, VOC_CLASSES[(i + 7) % 20]]
        splits["train" if i < 20 else "val" if i < 23 else "test"].append(stem)
    return fake_voc(root, objects, splits)


def fake_food(root):
    base = root / "food-101"
    meta = {"train": {}, "test": {}}
    for c in ("apple_pie", "ramen"):
        for i in range(6):
            write_jpg(base / "images" / c / f"{i}.jpg", i)
            meta["train" if i < 4 else "test"].setdefault(c, []).append(f"{c}/{i}")
    (base / "meta").mkdir(parents=True)
    for s, m in meta.items():
        (base / "meta" / f"{s}.json").write_text(json.dumps(m))
    return root


def fake_cars(root):
    from scipy.io import savemat

    base = root / "stanford_cars"
    dt = [("fname", "O"), ("class", "O")]
    for folder, ann, count in (("cars_train", base / "devkit" / "cars_train_annos.mat", 6),
                               ("cars_test", base / "cars_test_annos_withlabels.mat", 4)):
        rows = []
        for i in range(count):
            write_jpg(base / folder / f"{i:05d}.jpg", i)
            rows.append((f"{i:05d}.jpg", 1 + i % 2))
        ann.parent.mkdir(parents=True, exist_ok=True)
        savemat(ann, {"annotations": np.array(rows, dtype=dt)})
    savemat(base / "devkit" / "cars_meta.mat",
            {"class_names": np.array(["AM General Hummer", "Acura RL"], dtype=object)})
    return root


def fake_sun(root):
    base = root / "SUN397"
    (base).mkdir(parents=True)
    (base / "ClassName.txt").write_text("/a/abbey\n/b/bakery/shop\n")
    rows = {"Training_01.txt": [], "Testing_01.txt": []}
    for cls in ("a/abbey", "b/bakery/shop"):
        for i in range(4):
            rel = f"/{cls}/sun_{i}.jpg"
            write_jpg(base / rel.lstrip("/"), i)
            rows["Training_01.txt" if i < 3 else "Testing_01.txt"].append(rel)
    for f, r in rows.items():
        (base / f).write_text("\n".join(r) + "\n")
    return root


def fake_birdsnap(root):
    for split, n in (("train", 4), ("test", 2)):
        for c in ("Acadian_Flycatcher", "Bald_Eagle"):
            for i in range(n):
                write_jpg(root / "birdsnap" / split / c / f"{i}.jpg", i)
    return root


def register(net, name: str, tags: dict, study: str = "t"):
    """Log ``net`` in a pretrain run of ``study`` and register it as ``name`` with ``tags``
    (inside the ``store`` fixture); returns the ModelVersion."""
    from suite import models, tracking

    with tracking.start_run(study, "r", tracking.run_tags(study, "pretrain")):
        return models.log_and_register_model(net, name, tags, None)
