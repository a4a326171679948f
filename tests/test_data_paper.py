"""The paper's datasets, read from tiny on-disk fakes of their real layouts.

Food-101, Stanford Cars, FGVC Aircraft, VOC2007, DTD and Oxford-IIIT Pets go through the real
torchvision loaders (download=False); CIFAR, Flowers102, Caltech-101 and SUN397 through the
suite's own readers of the extracted layouts (see suite/data/paper.py for why).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from suite.data import DATASETS, fetch, get_info, list_datasets, load_split, make_loader
from suite.data import paper
from suite.errors import SuiteError


def _jpg(path, seed=0, size=(10, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG")


def _tf(im):  # PIL -> (3, H, W) float, no resizing: keeps the tests fast
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)


def _keys(ds):
    return {str(k) for k, _ in ds.samples}


def _check_splits(name, root, n_train, n_val, n_test, **kw):
    parts = {s: load_split(name, s, root=str(root), transform=_tf, **kw)
             for s in ("train", "val", "trainval", "test")}
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (n_train, n_val,
                                                                             n_test)
    assert len(parts["trainval"]) == n_train + n_val
    assert not _keys(parts["train"]) & _keys(parts["val"])
    assert not _keys(parts["test"]) & (_keys(parts["train"]) | _keys(parts["val"]))
    x, y = parts["test"][0]
    assert x.ndim == 3 and x.shape[0] == 3
    return parts


# ------------------------------------------------------------------------------------- fakes

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
            _jpg(base / "images" / c / f"{c}_{i}.jpg", i)
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
            _jpg(base / "images" / f"{breed}_{i}.jpg", i)
            rows["trainval" if i <= 5 else "test"].append(f"{breed}_{i} {label} {label} 1")
    (base / "annotations").mkdir(parents=True)
    for s, r in rows.items():
        (base / "annotations" / f"{s}.txt").write_text("\n".join(r) + "\n")
    return root


def fake_flowers(root):
    from scipy.io import savemat

    base = root / "flowers-102"
    labels = np.array([1, 2, 1, 2, 1, 2, 1, 2, 102, 102])
    for i in range(1, 11):
        _jpg(base / "jpg" / f"image_{i:05d}.jpg", i)
    savemat(base / "imagelabels.mat", {"labels": labels})
    savemat(base / "setid.mat", {"trnid": np.array([1, 2, 9]), "valid": np.array([3, 4]),
                                 "tstid": np.array([5, 6, 7, 8, 10])})
    return root


def fake_caltech(root, per_class=33):
    base = root / "caltech101" / "101_ObjectCategories"
    for c in ("BACKGROUND_Google", "accordion"):
        for i in range(1, per_class + 1):
            _jpg(base / c / f"image_{i:04d}.jpg", i, size=(4, 4))
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
            _jpg(data / "images" / f"{1000000 + n}.jpg", n)
            rows.append(f"{1000000 + n} {v}")
            n += 1
        (data / f"images_variant_{split}.txt").write_text("\n".join(rows) + "\n")
    return root


VOC_OBJECTS = {"000001": ["dog", "person"], "000002": ["car"], "000003": ["cat", "cat"],
               "000004": ["person"], "000005": ["bird", "car"], "000006": ["dog"]}


def fake_voc(root):
    base = root / "VOCdevkit" / "VOC2007"
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    for stem, objs in VOC_OBJECTS.items():
        _jpg(base / "JPEGImages" / f"{stem}.jpg", int(stem))
        xml = "".join(f"<object><name>{o}</name><difficult>0</difficult></object>" for o in objs)
        (base / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename>{xml}</annotation>")
    for split, stems in (("train", ["000001", "000002"]), ("val", ["000003"]),
                         ("test", ["000004", "000005", "000006"])):
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def fake_food(root):
    base = root / "food-101"
    meta = {"train": {}, "test": {}}
    for c in ("apple_pie", "ramen"):
        for i in range(6):
            _jpg(base / "images" / c / f"{i}.jpg", i)
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
            _jpg(base / folder / f"{i:05d}.jpg", i)
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
            _jpg(base / rel.lstrip("/"), i)
            rows["Training_01.txt" if i < 3 else "Testing_01.txt"].append(rel)
    for f, r in rows.items():
        (base / f).write_text("\n".join(r) + "\n")
    return root


def fake_birdsnap(root):
    for split, n in (("train", 4), ("test", 2)):
        for c in ("Acadian_Flycatcher", "Bald_Eagle"):
            for i in range(n):
                _jpg(root / "birdsnap" / split / c / f"{i}.jpg", i)
    return root


# ------------------------------------------------------------------------------------- tests

def test_registry():
    names = ["food101", "cifar10", "cifar100", "birdsnap", "sun397", "stanford_cars",
             "fgvc_aircraft", "voc2007", "dtd", "oxford_pets", "caltech101", "flowers102"]
    assert all(DATASETS[n].paper for n in names)
    assert set(paper.PAPER) == set(names) | {"imagenet"} and not DATASETS["imagenet"].paper
    assert {n for n in names if DATASETS[n].has_val} == {"fgvc_aircraft", "dtd", "flowers102",
                                                         "voc2007"}
    assert {n for n in names if DATASETS[n].metric == "mean_per_class"} == {
        "fgvc_aircraft", "oxford_pets", "caltech101", "flowers102"}
    assert get_info("voc2007").metric == "map11" and get_info("voc2007").multilabel
    assert get_info("caltech101").num_classes == 102


def test_cifar10(tmp_path):
    root = fake_cifar(tmp_path)
    parts = _check_splits("cifar10", root, 24, 6, 6)  # 5 batches x 6, 20% held out
    x, y = parts["train"][0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    # The image is the pickled row: R, G, B planes of 32x32 (batch 1 holds rows 0..5).
    raw = pickle.load(open(root / "cifar-10-batches-py" / "data_batch_1", "rb"))
    row, label = next((r, t) for r, t in parts["train"].samples if r < 6)
    x, y = parts["train"][[r for r, _ in parts["train"].samples].index(row)]
    assert y == label == raw["labels"][row]
    assert np.allclose(x.numpy(), raw["data"][row].reshape(3, 32, 32) / 255.0)


def test_cifar100(tmp_path):
    root = fake_cifar(tmp_path, hundred=True)
    # 30 images over 100 classes: singleton classes cannot give a val example.
    assert len(load_split("cifar100", "train", root=str(root), transform=_tf)) == 30
    assert len(load_split("cifar100", "val", root=str(root), transform=_tf)) == 0
    test = load_split("cifar100", "test", root=str(root), transform=_tf)
    assert len(test) == 6 and test.classes[:2] == ["c0", "c1"]


def test_dtd(tmp_path):
    parts = _check_splits("dtd", fake_dtd(tmp_path), 4, 4, 4)
    assert parts["train"].classes == ["banded", "dotted"]


def test_pets_holdout_is_stratified_and_seeded(tmp_path):
    root = fake_pets(tmp_path)
    parts = _check_splits("oxford_pets", root, 8, 2, 6, val_fraction=0.2)
    assert sorted(t for _, t in parts["val"].samples) == [0, 1]
    other = load_split("oxford_pets", "val", root=str(root), seed=1, transform=_tf)
    same = load_split("oxford_pets", "val", root=str(root), seed=0, transform=_tf)
    assert same.samples == parts["val"].samples
    assert len(other) == 2


def test_flowers(tmp_path):
    parts = _check_splits("flowers102", fake_flowers(tmp_path), 3, 2, 5)
    assert sorted(t for _, t in parts["train"].samples) == [0, 1, 101]


def test_caltech_30_per_class(tmp_path):
    root = fake_caltech(tmp_path)
    parts = _check_splits("caltech101", root, 48, 12, 6, val_fraction=0.2)
    trainval = parts["trainval"]
    counts = np.bincount([t for _, t in trainval.samples])
    assert counts.tolist() == [30, 30]  # the background class counts, as in the paper
    assert trainval.classes[0] == "BACKGROUND_Google"


def test_fgvc_aircraft(tmp_path):
    parts = _check_splits("fgvc_aircraft", fake_fgvc(tmp_path), 4, 2, 3)
    assert parts["test"].classes == ["707-320", "A300B4"]


def test_voc2007_multilabel(tmp_path):
    parts = _check_splits("voc2007", fake_voc(tmp_path), 2, 1, 3)
    _, y = parts["train"][0]
    assert y.dtype == torch.float32 and y.shape == (20,)
    assert [paper.VOC_CLASSES[i] for i in torch.nonzero(y)[:, 0]] == ["dog", "person"]
    x, y = next(iter(make_loader(parts["test"], 3, shuffle=False)))
    assert y.shape == (3, 20) and y.sum().item() == 4


def test_food_cars_sun_birdsnap(tmp_path):
    _check_splits("food101", fake_food(tmp_path), 6, 2, 4)
    _check_splits("stanford_cars", fake_cars(tmp_path), 4, 2, 4)
    parts = _check_splits("sun397", fake_sun(tmp_path), 4, 2, 2)
    assert parts["train"].classes == ["abbey", "bakery/shop"]
    assert sorted({t for _, t in parts["trainval"].samples}) == [0, 1]
    _check_splits("birdsnap", fake_birdsnap(tmp_path), 6, 2, 4)


def test_missing_dataset_names_fetch_command(tmp_path):
    with pytest.raises(SuiteError) as err:
        load_split("dtd", "train", root=str(tmp_path))
    assert f"suite data fetch dtd --root {tmp_path}" in str(err.value)
    with pytest.raises(SuiteError, match="--data-root"):
        load_split("cifar10", "train")
    with pytest.raises(SuiteError, match="ImageFolder tree"):
        load_split("birdsnap", "train", root=str(tmp_path))
    # Present but incomplete: torchvision's own error is wrapped, still with the command.
    (tmp_path / "oxford-iiit-pet" / "images").mkdir(parents=True)
    with pytest.raises(SuiteError, match="suite data fetch oxford_pets"):
        load_split("oxford_pets", "test", root=str(tmp_path))


def test_load_split_never_downloads(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def boom(*a, **k):
        raise AssertionError("load_split must not download")

    monkeypatch.setattr(tvu, "download_url", boom)
    monkeypatch.setattr(tvu, "download_and_extract_archive", boom)
    for name in paper.PAPER:
        with pytest.raises(SuiteError):
            load_split(name, "test", root=str(tmp_path))


def test_skip_corrupt_in_paper_dataset(tmp_path):
    root = fake_dtd(tmp_path)
    bad = root / "dtd" / "dtd" / "images" / "banded" / "banded_0.jpg"
    bad.write_bytes(b"not a jpeg at all")
    ds = load_split("dtd", "train", root=str(root), transform=_tf)
    with pytest.raises(SuiteError, match="banded_0.jpg.*--skip-corrupt"):
        ds[[str(p) for p, _ in ds.samples].index(str(bad))]
    ds = load_split("dtd", "train", root=str(root), transform=_tf, skip_corrupt=True)
    assert ds.skipped == [str(bad)] and len(ds) == 3


def test_fetch_messages(tmp_path, monkeypatch):
    with pytest.raises(SuiteError, match="ImageFolder tree"):
        fetch("birdsnap", str(tmp_path))
    with pytest.raises(SuiteError, match="stanford_cars"):
        fetch("stanford_cars", str(tmp_path))
    import torchvision.datasets as tvd
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvd, "DTD", offline)
    with pytest.raises(SuiteError, match="offline"):
        fetch("dtd", str(tmp_path))
    assert "nothing to download" in fetch("synth-fine", str(tmp_path))


def test_list_datasets(tmp_path):
    fake_dtd(tmp_path)
    fake_pets(tmp_path)
    rows = {r["name"]: r for r in list_datasets(str(tmp_path))}
    assert set(rows) == set(DATASETS)
    assert rows["dtd"]["present"] and (rows["dtd"]["train"], rows["dtd"]["val"],
                                       rows["dtd"]["test"]) == (4, 4, 4)
    assert (rows["oxford_pets"]["train"], rows["oxford_pets"]["val"]) == (8, 2)
    assert not rows["cifar10"]["present"] and rows["cifar10"]["train"] is None
    assert rows["synth-source"]["present"] and rows["synth-source"]["train"] == 4000
    assert rows["voc2007"]["metric"] == "map11"
