"""The paper's datasets, read from tiny on-disk fakes of their real layouts.

Food-101, Stanford Cars, FGVC Aircraft, VOC2007, DTD and Oxford-IIIT Pets go through the real
torchvision loaders (download=False); CIFAR, Flowers102, Caltech-101 and SUN397 through the
suite's own readers of the extracted layouts (see suite/data/paper.py for why).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from fakes import (fake_birdsnap, fake_caltech, fake_cars, fake_cifar, fake_dtd, fake_fgvc,
                   fake_flowers, fake_food, fake_pets, fake_sun, fake_voc)

from suite.data import DATASETS, fetch, get_info, list_datasets, load_split, make_loader
from suite.data import paper
from suite.errors import SuiteError


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
