"""folder:<path> datasets: layout errors, class numbering, hold-out, corrupt files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from suite.data import get_info, load_split, make_loader
from suite.data.files import check_image
from suite.errors import SuiteError

CLASSES = ("cat", "dog", "fox")


def _write(path, seed, fmt="PNG", size=(12, 10)):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def make_tree(root, per_class=5, val=False):
    seed = 0
    for split, n in (("train", per_class), ("test", 2)) + ((("val", 2),) if val else ()):
        for c in CLASSES:
            for i in range(n):
                fmt = "JPEG" if i % 2 else "PNG"
                _write(root / split / c / f"{i}.{fmt.lower()}", seed, fmt)
                seed += 1
    return root


def test_info_and_splits(tmp_path):
    root = make_tree(tmp_path / "tree")
    info = get_info(f"folder:{root}")
    assert info.kind == "folder" and info.num_classes == 3 and not info.has_val
    assert info.metric == "top1"
    tf = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)  # noqa
    train = load_split(f"folder:{root}", "train", transform=tf, val_fraction=0.2)
    val = load_split(f"folder:{root}", "val", transform=tf, val_fraction=0.2)
    trainval = load_split(f"folder:{root}", "trainval", transform=tf)
    test = load_split(f"folder:{root}", "test", transform=tf)
    assert len(train) == 12 and len(val) == 3 and len(trainval) == 15 and len(test) == 6
    tr_files = {p for p, _ in train.samples}
    assert not tr_files & {p for p, _ in val.samples}
    assert not tr_files & {p for p, _ in test.samples}
    assert sorted(t for _, t in val.samples) == [0, 1, 2]  # stratified: one per class
    x, y = train[0]
    assert x.shape == (3, 10, 12) and isinstance(y, int)
    # Same seed, same hold-out; another seed, another one.
    again = load_split(f"folder:{root}", "val", transform=tf, val_fraction=0.2)
    assert again.samples == val.samples
    other = [load_split(f"folder:{root}", "val", seed=s, transform=tf).samples for s in range(5)]
    assert any(o != val.samples for o in other)


def test_own_val_and_default_transform(tmp_path):
    root = make_tree(tmp_path / "tree", val=True)
    assert get_info(f"folder:{root}").has_val
    val = load_split(f"folder:{root}", "val")
    assert len(val) == 6 and len(load_split(f"folder:{root}", "train")) == 15
    x, y = val[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32  # default: ImageNet eval
    xb, yb = next(iter(make_loader(val, 4, shuffle=True, seed=1)))
    assert xb.shape == (4, 3, 224, 224) and yb.dtype == torch.int64


def test_layout_errors_name_the_path(tmp_path):
    with pytest.raises(SuiteError, match="does not exist"):
        get_info(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "t" / "train" / "a").mkdir(parents=True)
    with pytest.raises(SuiteError, match=r"no test/ sub-folder.*train/<class>"):
        load_split(f"folder:{tmp_path / 't'}", "train")
    root = make_tree(tmp_path / "x")
    _write(root / "test" / "wolf" / "0.png", 99)
    with pytest.raises(SuiteError, match="wolf"):
        load_split(f"folder:{root}", "test")


@pytest.mark.parametrize("kind", ["truncated_jpeg", "truncated_png", "random_bytes"])
def test_corrupt_file_is_named_and_can_be_skipped(tmp_path, kind):
    root = make_tree(tmp_path / "tree")
    if kind == "truncated_jpeg":
        bad = root / "train" / "dog" / "1.jpeg"
        bad.write_bytes(bad.read_bytes()[:-200])
    elif kind == "truncated_png":
        bad = root / "train" / "dog" / "0.png"
        bad.write_bytes(bad.read_bytes()[:60])
    else:
        bad = root / "train" / "dog" / "junk.jpg"
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    assert check_image(bad) is not None
    with pytest.raises(SuiteError) as err:
        load_split(f"folder:{root}", "train")
    assert str(bad) in str(err.value) and "--skip-corrupt" in str(err.value)
    ds = load_split(f"folder:{root}", "trainval", skip_corrupt=True)
    assert ds.skipped == [str(bad)]
    assert str(bad) not in {p for p, _ in ds.samples}
    assert len(ds) == 15 - (kind != "random_bytes")
    # The test split is unaffected.
    assert load_split(f"folder:{root}", "test").skipped == []


def test_lazy_decode_error_names_file(tmp_path):
    # A file that passes the cheap checks but fails to decode still names itself.
    root = make_tree(tmp_path / "tree")
    ds = load_split(f"folder:{root}", "test")
    path = ds.samples[0][0]
    Image.new("RGB", (8, 8)).save(path, format="PNG")
    data = bytearray(open(path, "rb").read())
    data[40:50] = b"\x00" * 10  # damage the compressed pixel data, keep header and IEND
    open(path, "wb").write(bytes(data))
    with pytest.raises(SuiteError, match=str(path).replace("\\", "\\\\")):
        ds[0]
