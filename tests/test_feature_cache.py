"""The feature cache is keyed by what the features were computed from: two datasets whose names
sanitise alike get their own files, and a cached split is reused only while its files (list,
labels, sizes, mtimes) or the synthetic generator's parameters are unchanged; otherwise it is
re-extracted with a console line naming the file and what changed. A tiny registered SmallCNN
on tiny ImageFolder trees written with PIL, in a temporary MLflow store."""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from fakes import fake_dtd, register, write_jpg
from PIL import Image

from suite import features, models, tracking
from suite.data import synthetic


@pytest.fixture
def mv(store):
    torch.manual_seed(0)
    net = models.build_model("cnn", 10, width=4).eval()
    tags = {tracking.VTAG_ARCH: "cnn", "width": 4, "depth": 1, "image_size": 32}
    return register(net, "c-cnn", tags, study="c")


@pytest.fixture
def forwards(monkeypatch):
    """How many times extraction ran the network (calls of run_extractor)."""
    calls = []
    real = features.run_extractor

    def counted(*a, **k):
        calls.append(k.get("description"))
        return real(*a, **k)

    monkeypatch.setattr(features, "run_extractor", counted)
    return calls


@pytest.fixture
def logs(monkeypatch):
    """The console lines features logs (plain text)."""
    lines: list[str] = []
    monkeypatch.setattr(features.console, "log",
                        lambda *a, **k: lines.append(" ".join(str(x) for x in a)))
    return lines


def _tree(root, per_class: dict[str, int], seed: int = 0, ext: str = "jpg"):
    """An ImageFolder tree: train/ and test/ with ``per_class[c]`` images of each class c."""
    for split in ("train", "test"):
        for c, n in per_class.items():
            for i in range(n):
                _image(root / split / c / f"{i}.{ext}", seed)
                seed += 1
    return root


def _image(path, seed, size=(12, 12)):
    if path.suffix == ".jpg":
        write_jpg(path, seed, size=size)
        return
    # BMP: uncompressed, so a different picture of the same size is a file of the same size.
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="BMP")


def _extract(mv, dataset, split="test", **kw):
    return features.extract(mv, dataset, split, device="cpu", num_workers=0, batch_size=8, **kw)


def test_names_that_sanitise_alike_get_their_own_files(tmp_path, mv):
    """folder:/x/a_b and folder:/x/a/b were one file (folder__x_a_b): the second extraction
    returned the first's rows."""
    a_b = _tree(tmp_path / "x" / "a_b", {"c0": 5, "c1": 5})  # 10 test images, labels {0, 1}
    a__b = _tree(tmp_path / "x" / "a" / "b", {"c0": 7, "c1": 7, "c2": 7})  # 21, {0, 1, 2}
    x1, y1 = _extract(mv, f"folder:{a_b}")
    x2, y2 = _extract(mv, f"folder:{a__b}")
    assert len(x1) == 10 and set(y1.tolist()) == {0, 1}
    assert len(x2) == 21 and set(y2.tolist()) == {0, 1, 2}
    p1 = features.cache_path(mv.name, mv.version, f"folder:{a_b}", "test")
    p2 = features.cache_path(mv.name, mv.version, f"folder:{a__b}", "test")
    assert p1 != p2 and p1.is_file() and p2.is_file()
    # Readable: the sanitised name, then a short hash of the exact id.
    assert p1.parent.name.startswith(tracking.safe_name(f"folder:{a_b}") + "-")
    # Reading both back (from the cache now) still gives each its own rows.
    assert len(_extract(mv, f"folder:{a_b}")[0]) == 10
    assert len(_extract(mv, f"folder:{a__b}")[0]) == 21


def test_added_images_are_extracted(tmp_path, mv, forwards, logs):
    tree = _tree(tmp_path / "t", {"c0": 5, "c1": 5})
    ds = f"folder:{tree}"
    assert len(_extract(mv, ds)[0]) == 10
    for c in ("c0", "c1"):
        for i in range(5, 15):
            _image(tree / "test" / c / f"{i}.jpg", 1000 + i)
    x, y = _extract(mv, ds)
    assert len(x) == 30 and len(y) == 30
    assert len(forwards) == 2
    path = features.cache_path(mv.name, mv.version, ds, "test")
    said = [line for line in logs if str(path) in line]
    assert len(said) == 1 and "10 -> 30" in said[0], logs
    with np.load(path) as z:  # the cache now holds the new rows
        assert len(z["x"]) == 30 and json.loads(str(z["meta"]))["data"]["n"] == 30


def test_replaced_file_of_the_same_size_is_extracted(tmp_path, mv, forwards, logs):
    """One file rewritten with other pixels: same name, same size (BMP), a later mtime."""
    tree = _tree(tmp_path / "t", {"c0": 3, "c1": 3}, ext="bmp")
    ds = f"folder:{tree}"
    x1, _ = _extract(mv, ds)
    victim = tree / "test" / "c1" / "2.bmp"
    size, mtime = victim.stat().st_size, victim.stat().st_mtime_ns
    _image(victim, 777)
    # A later mtime, as any rewrite gives it (set explicitly: a coarse-clock file system could
    # otherwise give the rewrite the same timestamp).
    os.utime(victim, ns=(mtime + 2_000_000_000, mtime + 2_000_000_000))
    assert victim.stat().st_size == size
    x2, _ = _extract(mv, ds)
    assert len(forwards) == 2
    order = sorted(str(p) for p in (tree / "test").rglob("*.bmp"))
    row = order.index(str(victim))
    assert not np.allclose(x1[row], x2[row])  # the new picture's features
    others = [i for i in range(len(x1)) if i != row]
    np.testing.assert_allclose(x1[others], x2[others], rtol=1e-5, atol=1e-6)
    path = features.cache_path(mv.name, mv.version, ds, "test")
    assert any(str(path) in line and "replaced" in line for line in logs), logs


def test_unchanged_tree_reuses_the_cache(tmp_path, mv, forwards, logs):
    tree = _tree(tmp_path / "t", {"c0": 4, "c1": 4})
    ds = f"folder:{tree}"
    x1, y1 = _extract(mv, ds, "train")  # the seeded hold-out's train part
    path = features.cache_path(mv.name, mv.version, ds, "train")
    stamp = path.stat().st_mtime_ns
    x2, y2 = _extract(mv, ds, "train")
    assert len(forwards) == 1 and path.stat().st_mtime_ns == stamp and not logs
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    with np.load(path) as z:
        fp = json.loads(str(z["meta"]))["data"]
    assert fp["dataset"] == ds and fp["n"] == len(x1) == 6 and len(fp["digest"]) == 64
    # Another hold-out seed is another sample list: its own file, extracted once.
    _extract(mv, ds, "train", seed=1)
    assert len(forwards) == 2


@pytest.fixture
def small_synthetic(monkeypatch):
    """synth-fine and synth-shapes at 2 test images per class (20 and 8 images)."""
    for name in ("synth-fine", "synth-shapes"):
        task = synthetic.TASKS[name]
        monkeypatch.setitem(synthetic.TASKS, name, dataclasses.replace(
            task, per_class={**task.per_class, "test": 2}))
    synthetic.generate.cache_clear()
    yield
    synthetic.generate.cache_clear()  # never leave the small sets memoised for other tests


def test_synthetic_sets_hit_the_cache_and_follow_the_generator(mv, forwards, logs,
                                                               small_synthetic, monkeypatch):
    x1, _ = _extract(mv, "synth-fine")
    x2, _ = _extract(mv, "synth-fine")
    assert len(x1) == 20 and len(forwards) == 1
    np.testing.assert_array_equal(x1, x2)
    xs, _ = _extract(mv, "synth-shapes")
    assert len(xs) == 8 and len(forwards) == 2
    fine = features.cache_path(mv.name, mv.version, "synth-fine", "test")
    shapes = features.cache_path(mv.name, mv.version, "synth-shapes", "test")
    assert fine != shapes and fine.parent != shapes.parent
    with np.load(fine) as z:
        fp = json.loads(str(z["meta"]))["data"]
    assert fp["kind"] == "synthetic" and fp["n"] == 20
    assert fp["generator"]["parts"] == [
        {"split": "test", "seed": synthetic.split_seed("synth-fine", "test"), "n": 20}]

    # The generator's parameters changed (3 test images per class): the cache is stale.
    task = synthetic.TASKS["synth-fine"]
    monkeypatch.setitem(synthetic.TASKS, "synth-fine", dataclasses.replace(
        task, per_class={**task.per_class, "test": 3}))
    synthetic.generate.cache_clear()
    x3, _ = _extract(mv, "synth-fine")
    assert len(x3) == 30 and len(forwards) == 3
    assert any(str(fine) in line and "20 -> 30" in line for line in logs), logs


def test_paper_dataset_under_two_roots(tmp_path, mv, forwards):
    """The same paper dataset under two data roots: two files; a relabelled or replaced file
    under one root re-extracts that one only."""
    a, b = fake_dtd(tmp_path / "a"), fake_dtd(tmp_path / "b")
    _extract(mv, "dtd", root=str(a))
    _extract(mv, "dtd", root=str(b))
    pa = features.cache_path(mv.name, mv.version, "dtd", "test", root=str(a))
    pb = features.cache_path(mv.name, mv.version, "dtd", "test", root=str(b))
    assert pa != pb and pa.is_file() and pb.is_file() and len(forwards) == 2
    img = b / "dtd" / "dtd" / "images" / "dotted" / "dotted_2.jpg"  # a test image
    write_jpg(img, 4242)
    os.utime(img, ns=(img.stat().st_mtime_ns + 2_000_000_000,) * 2)
    _extract(mv, "dtd", root=str(a))
    assert len(forwards) == 2  # root a is unchanged
    _extract(mv, "dtd", root=str(b))
    assert len(forwards) == 3


def test_another_input_normalisation_re_extracts(tmp_path, mv, forwards, logs):
    """The input plan (transform, normalisation, resize) is part of what the cache checks: the
    same version with other input statistics (a corrected tag, a code change of the plan) gets
    its features re-extracted, and the probe's cell key changes with it."""
    from suite.config import ProbeConfig
    from suite.data import get_info
    from suite.probe import probe_cell

    tree = _tree(tmp_path / "t", {"c0": 3, "c1": 3})
    ds = f"folder:{tree}"
    x1, _ = _extract(mv, ds)
    mv2 = copy.copy(mv)  # the same registered version, with other input statistics
    mv2._tags = {**mv.tags, "input_mean": "0.5,0.5,0.5", "input_std": "0.25,0.25,0.25"}
    plan_a = features.input_plan_id(mv, get_info(ds))
    plan_b = features.input_plan_id(mv2, get_info(ds))
    assert plan_a != plan_b and "0.25" in plan_b
    x2, _ = _extract(mv2, ds)
    assert len(forwards) == 2 and any("input plan" in line for line in logs)
    assert not np.allclose(x1, x2)
    cfg = ProbeConfig(model_name=mv.name, dataset=ds)
    assert probe_cell(cfg, mv.name, "1", plan_a) != probe_cell(cfg, mv.name, "1", plan_b)
