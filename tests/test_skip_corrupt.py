"""--skip-corrupt through the stages: without it an unreadable image stops `suite probe` and
`suite finetune` with an error naming the file; with it the file is left out, listed in the
run's skipped_images/ artifact, and the feature cache is only reused for the same list."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fakes import register, write_jpg

from suite import features, models, tracking
from suite.cli import main

CLASSES = ("cat", "dog")


@pytest.fixture
def tree(tmp_path):
    """folder: tree of 40×40 JPEGs, 4 train and 2 test images per class; one train JPEG
    truncated (returned as the second element)."""
    root = tmp_path / "tree"
    seed = 0
    for split, n in (("train", 4), ("test", 2)):
        for c in CLASSES:
            for i in range(n):
                write_jpg(root / split / c / f"{i}.jpg", seed, size=(40, 40))
                seed += 1
    bad = root / "train" / "dog" / "3.jpg"
    bad.write_bytes(bad.read_bytes()[:-200])
    return root, bad


@pytest.fixture
def registered(store):
    torch.manual_seed(0)
    net = models.build_model("cnn", 10, width=4).eval()
    tags = {tracking.VTAG_ARCH: "cnn", "width": 4, "depth": 1, "image_size": 32}
    return store, register(net, "s-cnn", tags, study="s")


def _artifact(run_id: str, path: str) -> str:
    import mlflow

    return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")


def _finished(stage: str):
    return tracking.client().search_runs(
        [tracking.experiment_id("s")],
        filter_string=f"tags.`suite.stage` = '{stage}' and attributes.status = 'FINISHED'")


def test_probe_fails_naming_the_file_then_skips_it(tree, registered, capsys):
    root, bad = tree
    store, mv = registered
    args = ["-w", str(store.workspace), "probe", mv.name, f"folder:{root}", "--device", "cpu",
            "--num-workers", "0", "--study", "s"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "--skip-corrupt" in err and "Traceback" not in err

    assert main([*args, "--skip-corrupt"]) == 0
    runs = _finished("probe")
    assert len(runs) == 1
    names = {a.path for a in tracking.client().list_artifacts(runs[0].info.run_id,
                                                              "skipped_images")}
    # train and val are both drawn from train/, so both report its unreadable file.
    assert names == {"skipped_images/tree-train.txt", "skipped_images/tree-val.txt"}
    assert all(_artifact(runs[0].info.run_id, n).split() == [str(bad)] for n in names)
    assert runs[0].data.metrics["n_train"] == 5  # 8 train images, one bad, 2 held out as val


def test_feature_cache_follows_the_skipped_list(tree, registered):
    root, bad = tree
    _, mv = registered
    ds = f"folder:{root}"
    x, _ = features.extract(mv, ds, "trainval", device="cpu", num_workers=0, skip_corrupt=True)
    assert len(x) == 7
    path = features.cache_path(mv.name, mv.version, ds, "trainval")
    with np.load(path) as z:
        assert json.loads(str(z["meta"]))["skipped"] == [str(bad)]
    # The file repaired: the cached features (computed without it) are not reused.
    write_jpg(bad, 99, size=(40, 40))
    x, _ = features.extract(mv, ds, "trainval", device="cpu", num_workers=0, skip_corrupt=True)
    assert len(x) == 8
    x, _ = features.extract(mv, ds, "trainval", device="cpu", num_workers=0)
    assert len(x) == 8


def test_finetune_skips_and_lists_the_file(tree, registered, capsys):
    root, bad = tree
    store, mv = registered
    args = ["-w", str(store.workspace), "finetune", mv.name, f"folder:{root}", "--device", "cpu",
            "--num-workers", "0", "--study", "s", "--steps", "2", "--eval-every", "2",
            "--batch-size", "4", "--lrs", "0.01", "--local"]
    assert main(args) == 2
    assert str(bad) in capsys.readouterr().err
    assert main([*args, "--skip-corrupt"]) == 0
    runs = _finished("finetune")
    assert len(runs) == 1
    text = _artifact(runs[0].info.run_id, f"skipped_images/{root.name}.txt")
    assert text.split() == [str(bad)]
