"""Stage ``finetune``: fine-tune a registered model (or train its architecture from scratch) on a
target dataset over a learning-rate × weight-decay grid.

:func:`run_finetune` reads the registered version ``cfg.model_name``/``cfg.model_version`` (its
weights for ``setting=finetune``, only its architecture tags for ``setting=scratch``) and the
target's ``train``, ``val`` and ``test`` splits, and writes, in the study's experiment:

- a parent run (tags ``suite.stage=finetune``, ``suite.setting``, ``suite.model``,
  ``suite.model_version``, ``suite.dataset``, ``suite.cell``, ``suite.selected_run``) with the
  config as params and metrics ``val_accuracy``, ``test_accuracy`` (percent, the dataset's
  metric), ``selected_lr``, ``selected_wd`` and the histories ``curve_val_accuracy`` /
  ``curve_test_accuracy`` of the selected point (step = optimisation step, step 0 = before
  training);
- one nested child run per grid point (tag ``suite.stage=finetune-point``) with params ``lr``,
  ``weight_decay``, metrics ``val_accuracy``, ``test_accuracy``, ``train_loss`` and the same two
  curves. No model artifacts are logged (they would dominate the cost of a small study).

Inputs are preprocessed exactly as for the probe's features: on-disk images through the
version's own transform, synthetic ones resized on the device when the network was registered at
another input side. Training uses no augmentation and plain (un-smoothed) targets; a kept
auxiliary head is trained with weight 0.4; multi-label targets (VOC2007, metric ``map11``) use
binary cross-entropy.

Selection: the point with the best final validation score (ties: the smaller learning rate, then
the smaller weight decay); its test score is reported. Unlike the logistic probe, which refits on
train+val as the paper does, fine-tuning is not refit: every point is trained on ``train`` only,
so that the reported test score belongs to exactly the network that was selected (refitting would
cost another full training run per cell).

Resume: a FINISHED parent run with the same cell (setting, model name and version, dataset,
grid, steps, batch size, seed) is returned as is (``reused=True``). A failure anywhere marks the
point and the parent FAILED, and a re-run starts the cell over.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from dataclasses import dataclass

import torch

from suite import tracking
from suite.config import FinetuneConfig, Setting
from suite.data.files import log_skipped
from suite.errors import SuiteError
from suite.progress import make_progress, resolve_device
from suite.train import (AUX_WEIGHT, cosine_schedule, cycle_batches, eval_loader, evaluate,
                         make_optimizer, to_device, train_steps)

TAG_SELECTED_RUN = "suite.selected_run"
POINT_STAGE = "finetune-point"
CURVE_VAL = "curve_val_accuracy"
CURVE_TEST = "curve_test_accuracy"
_BATCH_METRICS = 1000  # MLflow's limit on metrics per log_batch call


@dataclass(frozen=True)
class FinetuneResult:
    run_id: str  # the parent run
    val_accuracy: float  # percent, selected point, final step
    test_accuracy: float  # percent, selected point, final step
    selected_lr: float
    selected_wd: float
    reused: bool  # True when a finished run with the same cell was returned


@dataclass(frozen=True)
class _Point:
    """One trained grid point (a child run)."""

    lr: float
    wd: float
    run_id: str
    val_accuracy: float
    test_accuracy: float
    curve_val: list[tuple[int, float]]
    curve_test: list[tuple[int, float]]


def finetune_cell(cfg: FinetuneConfig, version: str) -> str:
    """The resume key of a fine-tune/scratch cell for a resolved model version."""
    return tracking.cell_key(
        stage="finetune", setting=Setting(cfg.setting).value, model=cfg.model_name,
        model_version=str(version), dataset=cfg.dataset, lrs=list(cfg.lrs),
        weight_decays=list(cfg.weight_decays), steps=cfg.steps, batch_size=cfg.batch_size,
        seed=cfg.seed, skip_corrupt=cfg.skip_corrupt)


def run_finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Train every (lr, wd) point of the grid, select on validation, report test."""
    setting = Setting(cfg.setting)
    _check(cfg, setting)
    mv = tracking.get_version(cfg.model_name, cfg.model_version)
    version = str(mv.version)
    cell = finetune_cell(cfg, version)
    done = tracking.find_finished_run(cfg.study, cell)
    if done is not None:
        m = done.data.metrics
        return FinetuneResult(done.info.run_id, m["val_accuracy"], m["test_accuracy"],
                              m["selected_lr"], m["selected_wd"], reused=True)

    data = _load_data(cfg, mv)
    device = resolve_device(cfg.device)
    base = None
    if setting is Setting.finetune:
        from suite.models import model_from_version

        base = model_from_version(mv)  # loaded once, copied per grid point

    tags = tracking.run_tags(cfg.study, "finetune", model=cfg.model_name, model_version=version,
                             dataset=cfg.dataset, setting=setting.value, cell=cell)
    point_tags = tracking.run_tags(cfg.study, POINT_STAGE, model=cfg.model_name,
                                   model_version=version, dataset=cfg.dataset,
                                   setting=setting.value)
    grid = list(itertools.product(cfg.lrs, cfg.weight_decays))
    run_name = f"{setting.value} {cfg.model_name}/v{version} on {cfg.dataset}"
    with tracking.start_run(cfg.study, run_name, tags) as parent:
        # Inside an MLflow Project the parent has just resumed the launched run MLFLOW_RUN_ID.
        # mlflow.start_run resumes that variable whenever no run_id is passed, nested runs
        # included, so leaving it set would make every grid point re-open the parent.
        if os.environ.get("MLFLOW_RUN_ID") == parent.info.run_id:
            del os.environ["MLFLOW_RUN_ID"]
        tracking.log_config(cfg)
        log_skipped([data.train, data.val_loader.dataset, data.test_loader.dataset],
                    cfg.dataset)
        points = []
        with make_progress() as bar:
            task = bar.add_task(run_name, total=len(grid) * cfg.steps)
            for lr, wd in grid:
                with tracking.start_run(cfg.study, f"lr={lr:g} wd={wd:g}", point_tags,
                                        nested=True) as child:
                    points.append(_train_point(cfg, setting, mv, base, data, lr, wd, device,
                                               child.info.run_id, lambda: bar.advance(task)))
        best = select_point(points)
        _log_selected(parent.info.run_id, best, cfg.steps)
    return FinetuneResult(parent.info.run_id, best.val_accuracy, best.test_accuracy, best.lr,
                          best.wd, reused=False)


def _check(cfg: FinetuneConfig, setting: Setting) -> None:
    if setting not in (Setting.finetune, Setting.scratch):
        raise SuiteError(f"run_finetune got setting={setting.value!r}.",
                         "Use finetune or scratch; the logistic setting is the probe stage.")
    if not cfg.lrs or not cfg.weight_decays:
        raise SuiteError("The fine-tune grid is empty (no learning rates or weight decays).",
                         "Give at least one value in lrs and in weight_decays.")
    if any(lr <= 0 for lr in cfg.lrs) or any(wd < 0 for wd in cfg.weight_decays):
        raise SuiteError("Learning rates must be positive and weight decays non-negative.",
                         "Fix lrs / weight_decays.")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.eval_every < 0:
        raise SuiteError(f"Invalid steps={cfg.steps}, batch_size={cfg.batch_size} or "
                         f"eval_every={cfg.eval_every}.",
                         "Use steps >= 1, batch_size >= 1, eval_every >= 0 (0 = only at the end).")


@dataclass(frozen=True)
class _Data:
    info: object  # suite.data.DatasetInfo
    train: object  # torch Dataset
    val_loader: object
    test_loader: object
    resize_to: int | None  # side the network expects when the (synthetic) images differ


def _load_data(cfg: FinetuneConfig, mv) -> _Data:
    """The target's splits, preprocessed exactly as the probe's features are (same plan:
    :func:`suite.features.input_plan`): on-disk images through the version's own transform,
    synthetic ones resized on the device when the network was registered at another side."""
    from suite.data import get_info, load_split
    from suite.features import input_plan

    info = get_info(cfg.dataset, root=cfg.data_root)
    if info.num_classes < 2:
        raise SuiteError(
            f"Dataset {cfg.dataset!r} has {info.num_classes} class(es); fine-tuning a classifier "
            "needs at least 2.", "Use a dataset with two or more classes.")
    transform, resize_to = input_plan(mv, info)
    split = dict(root=cfg.data_root, transform=transform, seed=cfg.seed,
                 skip_corrupt=cfg.skip_corrupt)
    train, val, test = (load_split(cfg.dataset, s, **split) for s in ("train", "val", "test"))
    return _Data(info=info, train=train,
                 val_loader=eval_loader(val, num_workers=cfg.num_workers),
                 test_loader=eval_loader(test, num_workers=cfg.num_workers),
                 resize_to=resize_to)


class _Resized(torch.nn.Module):
    """``model`` applied to images resized to ``side`` × ``side`` (bilinear, antialiased: the
    resize the probe's feature extraction applies), for a network registered at another input
    size than the target's images. Outputs (logits or (logits, aux)) pass through."""

    def __init__(self, model: torch.nn.Module, side: int):
        super().__init__()
        self.model, self.side = model, side

    def forward(self, x: torch.Tensor):
        x = torch.nn.functional.interpolate(x, size=(self.side, self.side), mode="bilinear",
                                            align_corners=False, antialias=True)
        return self.model(x)


def _build(setting: Setting, mv, base, num_classes: int, seed: int) -> torch.nn.Module:
    """The network of one grid point: pretrained weights with a fresh head (finetune) or the same
    architecture and training choices at random init (scratch). The new head's (or the whole
    network's) initialisation follows ``seed``, identical for every grid point."""
    from suite.models import architecture_from_version, replace_head

    torch.manual_seed(seed)
    if setting is Setting.finetune:
        return replace_head(copy.deepcopy(base), num_classes)
    return architecture_from_version(mv, num_classes)


def _train_point(cfg: FinetuneConfig, setting: Setting, mv, base, data: _Data, lr: float,
                 wd: float, device: torch.device, run_id: str, on_step) -> _Point:
    """Train one grid point inside its (active) child run and log it."""
    info = data.info
    model = _build(setting, mv, base, info.num_classes, cfg.seed)
    if data.resize_to:
        model = _Resized(model, data.resize_to)
    model = to_device(model, device)
    optimizer = make_optimizer(model, lr, wd)
    scheduler = cosine_schedule(optimizer, cfg.steps)
    batches = cycle_batches(data.train, cfg.batch_size, seed=cfg.seed,
                            num_workers=cfg.num_workers)
    curve_val: list[tuple[int, float]] = []
    curve_test: list[tuple[int, float]] = []

    def on_eval(step: int) -> None:
        curve_val.append((step, evaluate(model, data.val_loader, info.metric, device)))
        curve_test.append((step, evaluate(model, data.test_loader, info.metric, device)))

    # Fine-tuning uses plain (un-smoothed) targets; a kept auxiliary head still gets weight 0.4.
    loss = train_steps(model, batches, cfg.steps, optimizer, scheduler, device=device,
                       aux_weight=AUX_WEIGHT, multilabel=info.multilabel, on_eval=on_eval,
                       eval_every=cfg.eval_every, on_step=on_step)
    val, test = curve_val[-1][1], curve_test[-1][1]  # the last evaluation is at step == steps
    _log_batch(run_id, {"val_accuracy": val, "test_accuracy": test, "train_loss": loss},
               cfg.steps, curve_val, curve_test, params={"lr": lr, "weight_decay": wd})
    return _Point(lr, wd, run_id, val, test, curve_val, curve_test)


def select_point(points: list[_Point]) -> _Point:
    """Best final validation score; ties (and nan) broken toward smaller lr, then smaller wd."""

    def key(p: _Point):
        v = p.val_accuracy
        return (-(v if math.isfinite(v) else -math.inf), p.lr, p.wd)

    return min(points, key=key)


def _log_selected(parent_id: str, best: _Point, steps: int) -> None:
    _log_batch(parent_id, {"val_accuracy": best.val_accuracy,
                           "test_accuracy": best.test_accuracy, "selected_lr": best.lr,
                           "selected_wd": best.wd}, steps, best.curve_val, best.curve_test,
               tags={TAG_SELECTED_RUN: best.run_id})


def _log_batch(run_id: str, final: dict[str, float], step: int, curve_val, curve_test,
               params: dict | None = None, tags: dict | None = None) -> None:
    """Everything a point (or the parent) logs, in one ``log_batch`` call: final metrics at
    ``step``, both curves (one metric per evaluation), params and tags. A 300-step point with
    eval_every=50 is 3 + 2 * 7 metrics; one call instead of five saves most of the store's
    per-call cost (a transaction each on SQLite)."""
    import time

    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for k, v in final.items()]
    for name, curve in ((CURVE_VAL, curve_val), (CURVE_TEST, curve_test)):
        metrics += [Metric(name, float(v), now, int(s)) for s, v in curve]
    client = tracking.client()
    client.log_batch(run_id, metrics=metrics[:_BATCH_METRICS],
                     params=[Param(k, str(v)) for k, v in (params or {}).items()],
                     tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
    for i in range(_BATCH_METRICS, len(metrics), _BATCH_METRICS):  # long curves
        client.log_batch(run_id, metrics=metrics[i:i + _BATCH_METRICS])


__all__ = ["FinetuneResult", "run_finetune", "finetune_cell", "select_point", "TAG_SELECTED_RUN"]
