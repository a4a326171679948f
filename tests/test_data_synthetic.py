"""Synthetic datasets: determinism, shapes, balance, disjoint splits, the loader fast path."""

from __future__ import annotations

import pytest
import torch

from suite.data import (DATASETS, SPLITS, TensorImageDataset, get_info, load_split,
                        make_loader)
from suite.data import synthetic
from suite.errors import SuiteError

SYNTH = list(synthetic.TASKS)


def test_registry_matches_contract():
    assert SYNTH == ["synth-source", "synth-shapes", "synth-textures", "synth-fine",
                     "synth-shift"]
    for name in SYNTH:
        info = get_info(name)
        assert info.kind == "synthetic" and info.image_size == 32 and info.has_val
        assert info.num_classes == len(synthetic.TASKS[name].classes)
    assert get_info("synth-fine").metric == "mean_per_class"
    assert get_info("synth-source").num_classes == 40
    assert set(DATASETS) >= set(SYNTH)


@pytest.mark.parametrize("name", SYNTH)
def test_shapes_balance_and_sizes(name):
    task = synthetic.TASKS[name]
    k = len(task.classes)
    for split in ("train", "val", "test"):
        ds = load_split(name, split)
        assert isinstance(ds, TensorImageDataset)
        assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
        assert ds.images.shape == (task.per_class[split] * k, 3, 32, 32)
        counts = torch.bincount(ds.labels, minlength=k)
        assert torch.all(counts == task.per_class[split])
        assert torch.isfinite(ds.images).all()
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and isinstance(y, int)
    tv = load_split(name, "trainval")
    assert len(tv) == len(load_split(name, "train")) + len(load_split(name, "val"))


def test_generation_is_deterministic_and_seeded_per_split():
    synthetic.generate.cache_clear()
    a, ya = synthetic.generate("synth-fine", "val")
    synthetic.generate.cache_clear()
    b, yb = synthetic.generate("synth-fine", "val")
    assert torch.equal(a, b) and torch.equal(ya, yb)
    # The caller's seed does not change the data (it only seeds hold-outs of on-disk sets).
    assert torch.equal(load_split("synth-fine", "val", seed=3).images, a)


@pytest.mark.parametrize("name", SYNTH)
def test_splits_are_disjoint(name):
    # Independent draws: no image of val or test equals (or nearly equals) a train image.
    train = load_split(name, "train").images.flatten(1)
    for split in ("val", "test"):
        other = load_split(name, split).images.flatten(1)
        d = torch.cdist(other[:20], train)  # (20, n_train) Euclidean distances
        assert d.min() > 1.0


def test_normalisation_constants_fit_source():
    x = load_split("synth-source", "train").images
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=0.02)
    assert torch.allclose(std, torch.ones(3), atol=0.02)
    raw = synthetic.denormalise(x[:64])
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5  # generated in [0, 1]


def test_targets_use_unseen_primitives():
    # New palettes / textures / shapes are disjoint from the source ones by construction.
    assert not set(synthetic.NEW_TEXTURES) & set(synthetic.SOURCE_TEXTURES)
    assert not set(synthetic.NEW_SHAPES) & set(synthetic.SOURCE_SHAPES)
    d = torch.cdist(synthetic.NEW_PALETTE, synthetic.SOURCE_PALETTE)
    assert d.min() > 0.2
    grouped = [s for g in synthetic.COARSE_GROUPS.values() for s in g]
    assert sorted(grouped) == sorted(synthetic.SOURCE_SHAPES)


def test_loader_fast_path_order_and_epochs():
    ds = load_split("synth-fine", "val")
    loader = make_loader(ds, 64, shuffle=False)
    xs, ys = zip(*loader)
    assert len(loader) == len(xs) == -(-len(ds) // 64)
    assert torch.equal(torch.cat(xs), ds.images) and torch.equal(torch.cat(ys), ds.labels)

    def epoch_labels(loader):
        return torch.cat([y for _, y in loader])

    l1, l2 = make_loader(ds, 50, shuffle=True, seed=7), make_loader(ds, 50, shuffle=True, seed=7)
    e1, e2 = epoch_labels(l1), epoch_labels(l2)
    assert torch.equal(e1, e2)  # same seed, same order
    assert not torch.equal(e1, epoch_labels(l1))  # next epoch reshuffles
    assert torch.equal(torch.sort(e1).values, torch.sort(ds.labels).values)
    dl = make_loader(ds, 64, shuffle=True, drop_last=True)
    assert all(x.shape[0] == 64 for x, _ in dl) and len(dl) == len(ds) // 64


def test_loader_applies_transform_batchwise_or_per_item():
    ds = load_split("synth-fine", "val")
    calls = []

    def batch_ok(x):  # works on (N, 3, H, W) and (3, H, W)
        calls.append(x.ndim)
        return x * 2

    t = TensorImageDataset(ds.images, ds.labels, transform=batch_ok)
    x, _ = next(iter(make_loader(t, 32, shuffle=False)))
    assert torch.equal(x, ds.images[:32] * 2) and calls == [4]

    def item_only(x):  # rejects batches
        if x.ndim != 3:
            raise ValueError("one image at a time")
        return x[:, :16, :16]

    t = TensorImageDataset(ds.images, ds.labels, transform=item_only)
    x, _ = next(iter(make_loader(t, 8, shuffle=False)))
    assert x.shape == (8, 3, 16, 16) and torch.equal(x, ds.images[:8, :, :16, :16])
    assert torch.equal(t[3][0], ds.images[3, :, :16, :16])


def test_bad_names_and_splits():
    with pytest.raises(SuiteError, match="synth-source"):
        get_info("synth-sauce")
    with pytest.raises(SuiteError, match="split"):
        load_split("synth-source", "dev")
    assert set(SPLITS) == {"train", "val", "trainval", "test"}
