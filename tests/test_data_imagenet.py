"""ImageNet (ILSVRC-2012) as a pretraining source, from a tiny tree in the real layout."""

import numpy as np
import pytest
from PIL import Image

from suite import data
from suite.errors import SuiteError


def _tree(root, classes=("n01440764", "n01443537"), n_train=10, n_val=3):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in classes:
            folder = root / "imagenet" / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                px = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(px).save(folder / f"{c}_{i}.JPEG", format="JPEG")


def test_imagenet_tree_gives_train_heldout_val_and_val_as_test(tmp_path):
    _tree(tmp_path)
    info = data.get_info("imagenet", str(tmp_path))
    assert info.num_classes == 1000 and info.metric == "top1" and not info.paper
    train = data.load_split("imagenet", "train", root=str(tmp_path))
    val = data.load_split("imagenet", "val", root=str(tmp_path))
    test = data.load_split("imagenet", "test", root=str(tmp_path))
    assert len(train) + len(val) == 20 and len(val) >= 2 and len(test) == 6
    image, label = test[0]
    assert image.shape == (3, 224, 224) and label in (0, 1)


def test_missing_imagenet_says_where_to_put_it(tmp_path):
    with pytest.raises(SuiteError, match="train/<wnid>"):
        data.load_split("imagenet", "train", root=str(tmp_path))
    with pytest.raises(SuiteError, match="never downloaded"):
        data.fetch("imagenet", str(tmp_path))


@pytest.mark.slow
def test_pretrain_on_imagenet_folder_registers_a_version(tmp_path, store):
    from suite.config import ModelConfig, PretrainConfig
    from suite.pretrain import run_pretrain

    _tree(tmp_path, n_train=4, n_val=2)
    cfg = PretrainConfig(model=ModelConfig(name="r18", arch="resnet18", epochs=1),
                         source="imagenet", batch_size=4, study="inet", data_root=str(tmp_path))
    res = run_pretrain(cfg)
    assert res.registered_name == "inet-r18" and 0.0 <= res.source_top1 <= 100.0
