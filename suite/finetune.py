"""Stage ``finetune``: fine-tune a registered model (or train its architecture from scratch) on a
target dataset over a learning-rate × weight-decay grid.

Each grid point is a cell of its own (:func:`run_point`, key :func:`point_cell`), and the
selection over them is another (:func:`run_finetune` / :func:`select_and_log`, key
:func:`finetune_cell`), so that a study can train the points of one grid on different workers.
:func:`run_finetune` reads the registered version ``cfg.model_name``/``cfg.model_version`` (its
weights for ``setting=finetune``, only its architecture and input tags for ``setting=scratch``)
and the target's ``train``, ``val`` and ``test`` splits, trains the points not yet FINISHED, and
writes, in the study's experiment:

- one run per grid point (tag ``suite.stage=finetune-point``, its own ``suite.cell``) with the
  point's config, ``lr``, ``weight_decay`` and the target recipe (below) as params, metrics
  ``val_accuracy``, ``test_accuracy`` (percent, the dataset's metric), ``train_loss`` and the
  histories ``curve_val_accuracy`` / ``curve_test_accuracy`` (step = optimisation step, step
  0 = before training);
- the parent run (tags ``suite.stage=finetune``, ``suite.setting``, ``suite.model``,
  ``suite.model_version``, ``suite.dataset``, ``suite.cell``, ``suite.selected_run``), opened
  once every point is FINISHED, with the config and recipe as params and metrics
  ``val_accuracy``, ``test_accuracy``, ``selected_lr``, ``selected_wd`` and the two curves of the
  selected point; it then tags every point with ``mlflow.parentRunId``, so the MLflow UI shows
  the grid nested inside it. No model artifacts are logged (they would dominate the cost of a
  small study).

Target recipe: one for every network and every variant, so that the four training choices of
the paper (no BN γ, label smoothing, dropout, auxiliary head) are compared as pretraining
choices only, never as regularisers of target training (params ``target_dropout``,
``target_aux_head``, ``target_label_smoothing``, ``target_bn_scale``):

- no dropout before the classifier (p = 0), for suite-pretrained variants and ImageNet
  checkpoints alike (an architecture's own, e.g. MobileNet's 0.2, is set to 0 too: the grid's
  weight decay is the target's regulariser);
- no auxiliary head (dropped: its logits are never trained or scored);
- plain targets (no label smoothing), no augmentation; multi-label targets (VOC2007, metric
  ``map11``) use binary cross-entropy;
- batch-norm γ: fine-tuning keeps the checkpoint's parameterisation (a ``bn_scale=false``
  network's later weights carry the scale that γ would); scratch builds the architecture as it
  is built by default (γ learned).

Scratch is therefore one network per architecture: its cell key holds the architecture spec
(:func:`scratch_spec`: architecture, width/depth for ``cnn``, input side and preprocessing),
not the model's name or version, so models that share an architecture share one scratch cell
(:func:`scratch_representative` names the model it is reported under).

Inputs are preprocessed exactly as for the probe's features (:func:`suite.features.input_plan`):
normalised with the network's own training statistics, on-disk images through the version's
transform, synthetic ones re-normalised batch by batch and, when the network was registered at
another input side, resized on the device.

Selection: the point with the best final validation score (ties: the smaller learning rate, then
the smaller weight decay); its test score is reported. Unlike the logistic probe, which refits on
train+val as the paper does, fine-tuning is not refit: every point is trained on ``train`` only,
so that the reported test score belongs to exactly the network that was selected (refitting would
cost another full training run per cell).

Resume: a FINISHED parent run with the same cell (setting, model name and version for
fine-tuning or the architecture spec for scratch, dataset, grid, steps, batch size, seed, target
recipe) is returned as is (``reused=True``), and so is each FINISHED point. A failure in a point
marks that point's run FAILED; a re-run trains only the points not FINISHED.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from dataclasses import dataclass

import torch

from suite import tracking
from suite.config import FinetuneConfig, ModelConfig, Setting
from suite.data.files import log_skipped
from suite.errors import SuiteError
from suite.progress import make_progress, resolve_device
from suite.train import (
    cosine_schedule,
    cycle_batches,
    eval_loader,
    evaluate,
    make_optimizer,
    to_device,
    train_steps,
)

TAG_SELECTED_RUN = "suite.selected_run"
POINT_STAGE = "finetune-point"
CURVE_VAL = "curve_val_accuracy"
CURVE_TEST = "curve_test_accuracy"
_BATCH_METRICS = 1000  # MLflow's limit on metrics per log_batch call
# The target-training recipe (module docstring): the same for every network and variant.
TARGET_DROPOUT = 0.0  # p of the dropout before the classifier during target training
TARGET_AUX_HEAD = False  # auxiliary heads are dropped before target training
TARGET_LABEL_SMOOTHING = 0.0
# The training choices at their ModelConfig defaults: the baseline of the choice study.
BASELINE_CHOICES = {c: getattr(ModelConfig("baseline"), c) for c in tracking.VTAG_CHOICES}


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


def target_recipe(setting: Setting, mv) -> dict[str, object]:
    """The target-training recipe of a cell (module docstring), as logged params."""
    from suite.models import _tag_bool

    bn_scale = True if setting is Setting.scratch else _tag_bool(
        (mv.tags or {}).get("bn_scale"), True)
    return {"target_dropout": TARGET_DROPOUT, "target_aux_head": TARGET_AUX_HEAD,
            "target_label_smoothing": TARGET_LABEL_SMOOTHING, "target_bn_scale": bn_scale}


def scratch_spec(tags: dict) -> dict[str, object]:
    """What defines a scratch result besides the target and the grid, from a version's tags:
    the architecture (:func:`suite.models.architecture_spec`), the input side, and the on-disk
    preprocessing with the network's normalisation (which also fixes the synthetic sets'
    re-normalisation), so that the scratch network sees the inputs its fine-tuned counterpart
    sees. Training choices and names are not in it."""
    from suite import models

    side = models.input_side(tags)
    transform = models.with_normalisation(models.version_preprocessing(tags)[0], side,
                                          *models.input_normalisation(tags))
    return {**models.architecture_spec(tags), "image_size": side,
            "preprocessing": models.preprocessing_summary(transform)}


def scratch_key(tags: dict) -> str:
    """Short hash of :func:`scratch_spec`: equal for versions that share one scratch network."""
    return tracking.cell_key(**scratch_spec(tags))


def _choice_value(v: str | None):
    low = str(v).strip().lower() if v is not None else ""
    if low in ("true", "false"):
        return low == "true"
    try:
        return float(low)
    except ValueError:
        return None  # unknown (a third-party checkpoint's label smoothing)


def is_baseline(tags: dict) -> bool:
    """Every training choice of a version at its default (:data:`BASELINE_CHOICES`)."""
    return all(_choice_value(tags.get(c)) == d for c, d in BASELINE_CHOICES.items())


def scratch_representative(tag_sets: list[dict]) -> int:
    """Index of the version a shared scratch result is reported under, among versions with one
    :func:`scratch_spec`: a baseline (:func:`is_baseline`) if there is one, since a variant's
    source accuracy reflects its training choice, not the architecture; among those the highest
    source top-1 (the architecture's best-trained copy, as the paper plots each architecture at
    its ImageNet accuracy; an under-trained copy would misplace the point); ties: the first
    given (the study and the analysis both give them in registered-name order)."""
    idx = [i for i, t in enumerate(tag_sets) if is_baseline(t)] or list(range(len(tag_sets)))

    def top1(i: int) -> float:
        try:
            v = float(tag_sets[i].get(tracking.VTAG_SOURCE_TOP1))
        except (TypeError, ValueError):
            return -math.inf
        return v if math.isfinite(v) else -math.inf

    return max(idx, key=lambda i: (top1(i), -i))


def _cell_parts(cfg: FinetuneConfig, mv) -> dict[str, object]:
    setting = Setting(cfg.setting)
    parts: dict[str, object] = {
        "setting": setting.value, "dataset": cfg.dataset, "steps": cfg.steps,
        "batch_size": cfg.batch_size, "seed": cfg.seed, "skip_corrupt": cfg.skip_corrupt,
        "target": target_recipe(setting, mv)}
    if setting is Setting.scratch:
        parts["network"] = scratch_spec(mv.tags or {})
    else:
        parts.update(model=cfg.model_name, model_version=str(mv.version))
    return parts


def finetune_cell(cfg: FinetuneConfig, mv) -> str:
    """The resume key of a fine-tune/scratch cell (the selection over the grid, the parent run)
    for a resolved model version ``mv``: fine-tuning is keyed by the model's name and version,
    scratch by :func:`scratch_spec`."""
    return tracking.cell_key(stage="finetune", lrs=list(cfg.lrs),
                             weight_decays=list(cfg.weight_decays), **_cell_parts(cfg, mv))


def grid_points(cfg: FinetuneConfig) -> list[FinetuneConfig]:
    """The grid of ``cfg`` as one config per (lr, wd) point, in training order."""
    from suite.config import replace

    return [replace(cfg, lrs=(lr,), weight_decays=(wd,))
            for lr, wd in itertools.product(cfg.lrs, cfg.weight_decays)]


def point_cell(cfg: FinetuneConfig, mv) -> str:
    """The resume key of one grid point (a config of :func:`grid_points`): what its cell key
    says of the selection, with the point's lr and weight decay instead of the grid."""
    (lr,), (wd,) = cfg.lrs, cfg.weight_decays
    return tracking.cell_key(stage=POINT_STAGE, lr=lr, weight_decay=wd, **_cell_parts(cfg, mv))


def run_finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Train every (lr, wd) point of the grid not already FINISHED (:func:`run_point`), select
    on validation, report test in the parent run, and nest the points under it."""
    setting = Setting(cfg.setting)
    _check(cfg, setting)
    mv = tracking.get_version(cfg.model_name, cfg.model_version)
    cell = finetune_cell(cfg, mv)
    done = tracking.find_finished_run(cfg.study, cell)
    if done is not None:
        m = done.data.metrics
        return FinetuneResult(done.info.run_id, m["val_accuracy"], m["test_accuracy"],
                              m["selected_lr"], m["selected_wd"], reused=True)
    # Inside an MLflow Project the launched run is the parent, opened after the points: they
    # must not resume it (tracking.start_run adopts MLFLOW_RUN_ID), so it is set aside.
    launched = os.environ.pop("MLFLOW_RUN_ID", None)
    points_cfg = grid_points(cfg)
    found = {i: _finished_point(p, mv) for i, p in enumerate(points_cfg)}
    todo = [i for i, pt in found.items() if pt is None]
    shared = _Shared(cfg, setting, mv) if todo else None
    with make_progress() as bar:
        task = bar.add_task(_run_name(cfg, mv), total=len(todo) * cfg.steps)
        for i in todo:
            found[i] = run_point(points_cfg[i], mv=mv, shared=shared,
                                 on_step=lambda: bar.advance(task))
    points = [found[i] for i in range(len(points_cfg))]
    if launched:
        os.environ["MLFLOW_RUN_ID"] = launched
    return select_and_log(cfg, mv, cell, points, shared)


def run_point(cfg: FinetuneConfig, mv=None, shared: _Shared | None = None,
              on_step=None) -> _Point:
    """Train one grid point (``cfg`` has one lr and one weight decay) in a run of its own
    (tag ``suite.stage=finetune-point``, ``suite.cell`` = :func:`point_cell`), unless a FINISHED
    run with that key exists, which is returned as it is. Inside an MLflow Project (the
    ``point`` entry point) the launched run is the point's run."""
    setting = Setting(cfg.setting)
    _check(cfg, setting)
    if len(cfg.lrs) != 1 or len(cfg.weight_decays) != 1:
        raise SuiteError(f"A grid point needs one learning rate and one weight decay; got "
                         f"lrs={list(cfg.lrs)}, weight_decays={list(cfg.weight_decays)}.",
                         "Give one value of each, or run the whole grid (without --point).")
    mv = mv if mv is not None else tracking.get_version(cfg.model_name, cfg.model_version)
    done = _finished_point(cfg, mv)
    if done is not None:
        return done
    shared = shared if shared is not None else _Shared(cfg, setting, mv)
    (lr,), (wd,) = cfg.lrs, cfg.weight_decays
    version = str(mv.version)
    tags = tracking.run_tags(cfg.study, POINT_STAGE, model=cfg.model_name, model_version=version,
                             dataset=cfg.dataset, setting=setting.value,
                             cell=point_cell(cfg, mv))
    name = f"{_run_name(cfg, mv)} lr={lr:g} wd={wd:g}"
    with tracking.start_run(cfg.study, name, tags,
                            log_system_metrics=tracking.system_metrics_available()) as run:
        tracking.log_config(cfg)
        splits = shared.splits()
        log_skipped(list(splits.values()), cfg.dataset)
        tracking.log_dataset_inputs(cfg.dataset, tuple(splits), root=cfg.data_root,
                                    seed=cfg.seed, loaded=splits)
        return _train_point(cfg, setting, mv, shared.base, shared.data, lr, wd, shared.device,
                            run.info.run_id, on_step or (lambda: None), shared.recipe)


def _run_name(cfg: FinetuneConfig, mv) -> str:
    """``finetune cnn-w4 on synth-shapes`` (the study prefix of the registered name dropped)."""
    return (f"{Setting(cfg.setting).value} {tracking.model_label(cfg.model_name, cfg.study)}"
            f"/v{mv.version} on {cfg.dataset}")


class _Shared:
    """What every grid point of one (model, dataset, setting) loads: the data, the device, the
    checkpoint (fine-tuning; copied per point) and the target recipe."""

    def __init__(self, cfg: FinetuneConfig, setting: Setting, mv) -> None:
        self.data = _load_data(cfg, mv)
        self.device = resolve_device(cfg.device)
        self.recipe = target_recipe(setting, mv)
        self.base = None
        if setting is Setting.finetune:
            from suite.models import model_from_version

            self.base = model_from_version(mv)

    def splits(self) -> dict[str, object]:
        """The loaded splits by name (for the dataset inputs and the skipped-file lists)."""
        return {"train": self.data.train, "val": self.data.val_loader.dataset,
                "test": self.data.test_loader.dataset}


def _finished_point(cfg: FinetuneConfig, mv) -> _Point | None:
    run = tracking.find_finished_run(cfg.study, point_cell(cfg, mv))
    if run is None:
        return None
    client, rid = tracking.client(), run.info.run_id

    def curve(name: str) -> list[tuple[int, float]]:
        hist = sorted(client.get_metric_history(rid, name), key=lambda m: (m.step, m.timestamp))
        return [(int(m.step), float(m.value)) for m in hist]

    m = run.data.metrics
    (lr,), (wd,) = cfg.lrs, cfg.weight_decays
    return _Point(lr, wd, rid, m["val_accuracy"], m["test_accuracy"], curve(CURVE_VAL),
                  curve(CURVE_TEST))


def select_and_log(cfg: FinetuneConfig, mv, cell: str, points: list[_Point],
                   shared: _Shared | None) -> FinetuneResult:
    """The selection (the parent run): pick the point (:func:`select_point`), log the config,
    recipe, chosen point, its test score and curves, and nest the points under the parent
    (``mlflow.parentRunId``), so the UI shows the grid inside it."""
    import mlflow

    setting = Setting(cfg.setting)
    version = str(mv.version)
    tags = tracking.run_tags(cfg.study, "finetune", model=cfg.model_name, model_version=version,
                             dataset=cfg.dataset, setting=setting.value, cell=cell)
    best = select_point(points)
    with tracking.start_run(cfg.study, _run_name(cfg, mv), tags) as parent:
        tracking.log_config(cfg)
        splits = shared.splits() if shared is not None else {}
        tracking.log_dataset_inputs(cfg.dataset, ("train", "val", "test"), root=cfg.data_root,
                                    seed=cfg.seed, loaded=splits)
        mlflow.log_params(target_recipe(setting, mv))
        log_skipped(list(splits.values()), cfg.dataset)
        _log_selected(parent.info.run_id, best, cfg.steps)
        client = tracking.client()
        for p in points:
            client.set_tag(p.run_id, tracking.TAG_PARENT_RUN, parent.info.run_id)
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
    :func:`suite.features.input_plan`): normalised with the network's own statistics, on-disk
    images through the version's transform, synthetic ones resized on the device when the
    network was registered at another side."""
    from suite.data import get_info, load_split
    from suite.features import input_plan

    info = get_info(cfg.dataset, root=cfg.data_root)
    if info.num_classes < 2:
        raise SuiteError(
            f"Dataset {cfg.dataset!r} has {info.num_classes} class(es); fine-tuning a classifier "
            "needs at least 2.", "Use a dataset with two or more classes.")
    transform, resize_to = input_plan(mv, info)
    split = {"root": cfg.data_root, "transform": transform, "seed": cfg.seed,
             "skip_corrupt": cfg.skip_corrupt}
    train, val, test = (load_split(cfg.dataset, s, **split) for s in ("train", "val", "test"))
    return _Data(info=info, train=train,
                 val_loader=eval_loader(val, num_workers=cfg.num_workers),
                 test_loader=eval_loader(test, num_workers=cfg.num_workers),
                 resize_to=resize_to)


class _Resized(torch.nn.Module):
    """``model`` applied to images resized to ``side`` × ``side`` (bilinear, antialiased: the
    resize the probe's feature extraction applies), for a network registered at another input
    size than the target's images."""

    def __init__(self, model: torch.nn.Module, side: int):
        super().__init__()
        self.model, self.side = model, side

    def forward(self, x: torch.Tensor):
        x = torch.nn.functional.interpolate(x, size=(self.side, self.side), mode="bilinear",
                                            align_corners=False, antialias=True)
        return self.model(x)


def _build(setting: Setting, mv, base, num_classes: int, seed: int) -> torch.nn.Module:
    """The network of one grid point under the target recipe (module docstring): pretrained
    weights with a fresh head (finetune) or the version's architecture at random init, without
    its training choices (scratch). The new head's (or the whole network's) initialisation
    follows ``seed``, identical for every grid point."""
    from suite.models import (
        architecture_from_version,
        drop_aux_head,
        replace_head,
        set_dropout,
    )

    torch.manual_seed(seed)
    if setting is Setting.finetune:
        model = replace_head(drop_aux_head(copy.deepcopy(base)), num_classes)
    else:
        model = architecture_from_version(mv, num_classes)
    set_dropout(model, TARGET_DROPOUT)
    return model


def _train_point(cfg: FinetuneConfig, setting: Setting, mv, base, data: _Data, lr: float,
                 wd: float, device: torch.device, run_id: str, on_step,
                 recipe: dict[str, object]) -> _Point:
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

    # The target recipe: plain targets; the auxiliary head was dropped in _build.
    loss = train_steps(model, batches, cfg.steps, optimizer, scheduler, device=device,
                       label_smoothing=TARGET_LABEL_SMOOTHING, aux_weight=0.0,
                       multilabel=info.multilabel, on_eval=on_eval,
                       eval_every=cfg.eval_every, on_step=on_step)
    val, test = curve_val[-1][1], curve_test[-1][1]  # the last evaluation is at step == steps
    _log_batch(run_id, {"val_accuracy": val, "test_accuracy": test, "train_loss": loss},
               cfg.steps, curve_val, curve_test,
               params={"lr": lr, "weight_decay": wd, **recipe})
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


__all__ = [
    "BASELINE_CHOICES",
    "TAG_SELECTED_RUN",
    "FinetuneResult",
    "finetune_cell",
    "is_baseline",
    "run_finetune",
    "scratch_key",
    "scratch_representative",
    "scratch_spec",
    "select_point",
    "target_recipe",
]
