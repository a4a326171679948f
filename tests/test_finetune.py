"""suite.finetune: one run per grid point nested under the selection's parent, curves,
selection, resume (per point), failures."""

from __future__ import annotations

import zlib

import mlflow
import pytest
import torch

import suite.data
import suite.finetune
from suite import tracking
from suite.config import FinetuneConfig, ModelConfig, PretrainConfig, Setting
from suite.data import DatasetInfo, TensorImageDataset
from suite.errors import SuiteError
from suite.finetune import finetune_cell, grid_points, point_cell, run_finetune, run_point
from suite.pretrain import run_pretrain

SIZES = {"train": 12, "val": 5, "test": 5}  # images per class
INFOS = {
    "tiny-source": DatasetInfo("tiny-source", 4, "top1", has_val=True, image_size=8),
    "tiny-target": DatasetInfo("tiny-target", 3, "mean_per_class", has_val=True, image_size=8),
    "tiny-voc": DatasetInfo("tiny-voc", 3, "map11", multilabel=True, has_val=True, image_size=8),
    "tiny-one": DatasetInfo("tiny-one", 1, "top1", has_val=True, image_size=8),
    "tiny-big": DatasetInfo("tiny-big", 3, "top1", has_val=True, image_size=16),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_split(name: str, split: str) -> TensorImageDataset:
    """Class c = a bright patch in quadrant c on channel c % 3; multi-label: the image holds
    the patches of its class and the next one, labels (n, k) of 0/1."""
    info = INFOS[name]
    k = info.num_classes
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}/{split}".encode()))
    n = SIZES[split] * max(k, 2)
    y = torch.arange(n) % k
    present = torch.nn.functional.one_hot(y, k).float()
    if info.multilabel:
        present = present + torch.nn.functional.one_hot((y + 1) % k, k).float()
    side = info.image_size
    h = side // 2
    x = 0.3 * torch.randn(n, 3, side, side, generator=g)
    for c in range(k):
        r, q = divmod(c, 2)
        x[:, c % 3, h * r:h * r + h, h * q:h * q + h] += 2.0 * present[:, c].view(-1, 1, 1)
    return TensorImageDataset(x, present if info.multilabel else y)


@pytest.fixture
def tiny(store, monkeypatch):
    """Tiny datasets installed, and a registered 4-class source model 't-tiny' v1."""
    real_info, real_load = suite.data.get_info, suite.data.load_split
    monkeypatch.setattr(suite.data, "get_info",
                        lambda name, root="": INFOS[name] if name in INFOS
                        else real_info(name, root))
    monkeypatch.setattr(suite.data, "load_split",
                        lambda name, split, **kw: _tiny_split(name, split) if name in INFOS
                        else real_load(name, split, **kw))
    pre = run_pretrain(PretrainConfig(model=ModelConfig(name="tiny", width=4, epochs=2),
                                      source="tiny-source", batch_size=16, study="t",
                                      device="cpu"))
    return pre


def _cfg(**kw) -> FinetuneConfig:
    base = {"model_name": "t-tiny", "dataset": "tiny-target", "lrs": (0.01, 0.1),
            "weight_decays": (1e-4,), "steps": 12, "batch_size": 16, "eval_every": 5,
            "study": "t", "device": "cpu"}
    base.update(kw)
    return FinetuneConfig(**base)


def _runs(**tags):
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return mlflow.search_runs([tracking.experiment_id("t")], filter_string=flt,
                              output_format="list")


@pytest.mark.parametrize("setting", [Setting.finetune, Setting.scratch])
def test_grid_logs_parent_children_curves_and_resumes(tiny, setting):
    cfg = _cfg(setting=setting)
    res = run_finetune(cfg)
    assert not res.reused

    parent = tracking.client().get_run(res.run_id)
    t = parent.data.tags
    assert parent.info.status == "FINISHED"
    assert (t["suite.stage"], t["suite.setting"], t["suite.model"], t["suite.model_version"],
            t["suite.dataset"]) == ("finetune", setting.value, "t-tiny", "1", "tiny-target")
    assert t["suite.cell"] == finetune_cell(cfg, tracking.get_version("t-tiny", "1"))
    assert parent.data.params["setting"] == setting.value

    children = _runs(**{"mlflow.parentRunId": res.run_id})
    assert len(children) == 2
    by_lr = {}
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["suite.stage"] == "finetune-point"
        assert c.data.tags["suite.setting"] == setting.value
        point = next(p for p in grid_points(cfg) if p.lrs[0] == float(c.data.params["lr"]))
        assert c.data.tags["suite.cell"] == point_cell(point, tracking.get_version("t-tiny", "1"))
        curve_v = tracking.metric_history(c.info.run_id, "curve_val_accuracy")
        curve_t = tracking.metric_history(c.info.run_id, "curve_test_accuracy")
        assert [s for s, _ in curve_v] == [0, 5, 10, 12] == [s for s, _ in curve_t]
        assert curve_v[-1][1] == pytest.approx(c.data.metrics["val_accuracy"])
        assert curve_t[-1][1] == pytest.approx(c.data.metrics["test_accuracy"])
        by_lr[float(c.data.params["lr"])] = c

    # Selection: best final val, ties toward the smaller lr; the parent carries its numbers.
    best = max(sorted(by_lr), key=lambda lr: by_lr[lr].data.metrics["val_accuracy"])
    chosen = by_lr[best]
    assert res.selected_lr == best and res.selected_wd == pytest.approx(1e-4)
    assert t["suite.selected_run"] == chosen.info.run_id
    m = parent.data.metrics
    assert m["val_accuracy"] == pytest.approx(chosen.data.metrics["val_accuracy"])
    assert m["test_accuracy"] == pytest.approx(res.test_accuracy)
    assert res.test_accuracy == pytest.approx(chosen.data.metrics["test_accuracy"])
    assert m["selected_lr"] == best
    for name in ("curve_val_accuracy", "curve_test_accuracy"):
        assert tracking.metric_history(res.run_id, name) == \
            tracking.metric_history(chosen.info.run_id, name)

    again = run_finetune(cfg)
    assert again.reused and again.run_id == res.run_id
    assert (again.val_accuracy, again.test_accuracy, again.selected_lr) == pytest.approx(
        (res.val_accuracy, res.test_accuracy, res.selected_lr))
    assert len(_runs(**{"suite.stage": "finetune"})) == 1
    assert len(_runs(**{"suite.stage": "finetune-point"})) == 2


def test_finetune_starts_from_the_checkpoint_and_scratch_does_not(tiny):
    """Step 0 of the curve is the untrained head on pretrained features (finetune) vs a random
    network (scratch); the two settings are separate cells."""
    ft = run_finetune(_cfg(lrs=(0.01,), steps=3, eval_every=0))
    sc = run_finetune(_cfg(lrs=(0.01,), steps=3, eval_every=0, setting=Setting.scratch))
    assert ft.run_id != sc.run_id and not sc.reused
    assert [s for s, _ in tracking.metric_history(ft.run_id, "curve_val_accuracy")] == [0, 3]


def test_deterministic_under_seed(tiny):
    a = run_finetune(_cfg(lrs=(0.1,), study="a"))
    b = run_finetune(_cfg(lrs=(0.1,), study="b"))
    assert tracking.metric_history(a.run_id, "curve_val_accuracy") == \
        tracking.metric_history(b.run_id, "curve_val_accuracy")


def test_multilabel_target_uses_bce_and_map11(tiny):
    res = run_finetune(_cfg(dataset="tiny-voc", lrs=(0.1,), steps=20))
    assert not res.reused
    curve = tracking.metric_history(res.run_id, "curve_val_accuracy")
    assert 0.0 < curve[0][1] <= 100.0 and curve[-1][1] > curve[0][1]  # mAP rises from step 0


def test_single_class_dataset_is_a_user_error(tiny):
    with pytest.raises(SuiteError, match="1 class"):
        run_finetune(_cfg(dataset="tiny-one"))
    assert _runs(**{"suite.stage": "finetune"}) == []


def test_unknown_model_is_a_user_error(tiny):
    with pytest.raises(SuiteError, match="not found"):
        run_finetune(_cfg(model_name="t-nope"))


def test_failing_point_marks_runs_failed_and_rerun_completes(tiny, monkeypatch):
    real = suite.finetune.train_steps
    calls = []

    def fail_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(*a, **k)

    monkeypatch.setattr(suite.finetune, "train_steps", fail_second)
    cfg = _cfg()
    with pytest.raises(RuntimeError, match="out of memory"):
        run_finetune(cfg)
    assert _runs(**{"suite.stage": "finetune"}) == []  # the selection never started
    points = _runs(**{"suite.stage": "finetune-point"})
    assert sorted(c.info.status for c in points) == ["FAILED", "FINISHED"]
    assert tracking.find_finished_run(
        "t", finetune_cell(cfg, tracking.get_version("t-tiny", "1"))) is None

    res = run_finetune(cfg)  # trains only the failed point
    assert len(calls) == 3
    assert not res.reused
    assert tracking.client().get_run(res.run_id).info.status == "FINISHED"
    kids = _runs(**{"mlflow.parentRunId": res.run_id})
    assert sorted(c.info.status for c in kids) == ["FINISHED", "FINISHED"]
    assert run_finetune(cfg).run_id == res.run_id


def test_points_run_apart_then_the_selection_finds_them(tiny):
    """What a study's point cells do: each point alone (on any worker), then the selection
    trains nothing and nests them."""
    cfg = _cfg()
    pts = [run_point(p) for p in grid_points(cfg)]
    assert run_point(grid_points(cfg)[0]).run_id == pts[0].run_id  # reused
    res = run_finetune(cfg)
    kids = _runs(**{"mlflow.parentRunId": res.run_id})
    assert sorted(c.info.run_id for c in kids) == sorted(p.run_id for p in pts)
    assert len(_runs(**{"suite.stage": "finetune-point"})) == 2
    with pytest.raises(SuiteError, match="one learning rate"):
        run_point(cfg)


def test_inside_an_mlflow_project_the_launched_run_is_the_parent(tiny, monkeypatch):
    """``mlflow run`` creates the run and passes MLFLOW_RUN_ID: the parent resumes it and the
    grid points nest under it."""
    launched = tracking.client().create_run(tracking.experiment_id("t")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    res = run_finetune(_cfg(lrs=(0.1,), steps=3))
    assert res.run_id == launched
    run = tracking.client().get_run(launched)
    assert run.info.status == "FINISHED" and run.data.tags["suite.stage"] == "finetune"
    (child,) = _runs(**{"mlflow.parentRunId": launched})
    assert child.info.status == "FINISHED"


def test_images_of_another_size_are_resized_like_the_probe_does(tiny):
    """The source model was registered at 8x8; a 16x16 target is resized on the device to 8x8
    (bilinear, antialiased), as suite.features does for the probe."""
    mv = tracking.get_version("t-tiny", "1")
    data = suite.finetune._load_data(_cfg(dataset="tiny-big"), mv)
    assert data.resize_to == 8
    assert suite.finetune._load_data(_cfg(), mv).resize_to is None
    net = torch.nn.Conv2d(3, 2, 1)
    x = torch.randn(2, 3, 16, 16)
    want = net(torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear",
                                               align_corners=False, antialias=True))
    assert torch.allclose(suite.finetune._Resized(net, 8)(x), want)
    res = run_finetune(_cfg(dataset="tiny-big", lrs=(0.1,), steps=3))
    assert tracking.client().get_run(res.run_id).info.status == "FINISHED"


@pytest.fixture
def variant(tiny):
    """'t-tiny-var': t-tiny's architecture and recipe with three training choices on (dropout
    0.5, an auxiliary head, no BN γ)."""
    run_pretrain(PretrainConfig(model=ModelConfig(name="tiny-var", width=4, epochs=2,
                                                  dropout=0.5, aux_head=True, bn_scale=False),
                                source="tiny-source", batch_size=16, study="t", device="cpu"))
    return tracking.get_version("t-tiny-var", "1")


def test_every_variant_gets_the_same_target_recipe(variant):
    """Dropout and the aux head are pretraining choices: fine-tuning the variant trains without
    them (dropout p = 0 like the baseline's, aux head dropped, logits only in train mode), and
    the recipe is logged on the parent and point runs."""
    from suite.finetune import _build
    from suite.models import model_from_version

    base_mv = tracking.get_version("t-tiny", "1")
    pre = model_from_version(variant)
    assert pre.dropout.p == 0.5 and pre.aux is not None
    for mv in (base_mv, variant):
        net = _build(Setting.finetune, mv, model_from_version(mv), 3, seed=0)
        assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.0]
        assert net.aux is None and not net.aux_head
        out = net.train()(torch.randn(4, 3, 8, 8))
        assert isinstance(out, torch.Tensor) and out.shape == (4, 3)
    # No BN γ stays a property of the checkpoint when it is fine-tuned (γ = 1, a buffer).
    bns = [m for m in _build(Setting.finetune, variant, pre, 3, seed=0).modules()
           if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all("weight" not in bn._parameters for bn in bns)

    res = run_finetune(_cfg(model_name="t-tiny-var", lrs=(0.1,), steps=3))
    parent = tracking.client().get_run(res.run_id)
    (child,) = _runs(**{"mlflow.parentRunId": res.run_id})
    for run in (parent, child):
        p = run.data.params
        assert (p["target_dropout"], p["target_aux_head"], p["target_label_smoothing"],
                p["target_bn_scale"]) == ("0.0", "False", "0.0", "False")


def test_scratch_of_a_variant_is_the_scratch_of_its_baseline(variant):
    """Scratch builds the architecture as it builds itself (γ learned, no dropout, no aux head):
    the variant's scratch network is the baseline's, weight for weight, and both are one cell,
    trained once."""
    from suite.finetune import _build

    base_mv = tracking.get_version("t-tiny", "1")
    a = _build(Setting.scratch, base_mv, None, 3, seed=0)
    b = _build(Setting.scratch, variant, None, 3, seed=0)
    assert list(a.state_dict()) == list(b.state_dict())
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    assert b.bn_scale and b.aux is None and b.dropout.p == 0.0

    base_cfg, var_cfg = _cfg(setting=Setting.scratch), _cfg(setting=Setting.scratch,
                                                            model_name="t-tiny-var")
    assert finetune_cell(base_cfg, base_mv) == finetune_cell(var_cfg, variant)
    assert finetune_cell(_cfg(), base_mv) != finetune_cell(_cfg(model_name="t-tiny-var"),
                                                           variant)
    first = run_finetune(base_cfg)
    again = run_finetune(var_cfg)
    assert again.reused and again.run_id == first.run_id
    params = tracking.client().get_run(first.run_id).data.params
    assert (params["target_dropout"], params["target_aux_head"], params["target_bn_scale"]) == \
        ("0.0", "False", "True")
