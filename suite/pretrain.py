"""Stage ``pretrain``: train one network on the source task and register it.

:func:`run_pretrain` reads the source dataset (``train``, ``val`` and ``test`` splits of
``cfg.source``) and writes, in the study's experiment:

- one run named ``pretrain <model> on <source>`` (tags ``suite.stage=pretrain``, ``suite.model``,
  ``suite.dataset``, ``suite.cell``) with the config as params, the source's train/val/test
  splits as dataset inputs (:func:`suite.tracking.log_dataset_inputs`), per-epoch metrics
  ``train_loss``, ``val_accuracy`` and ``source_top1`` (source test top-1, percent; its last
  value is the final one), MLflow's ``system/*`` metrics when ``psutil`` is installed, and the
  model artifact (with its signature and input example);
- one registered model version (name ``cfg.registered_name`` or ``<study>-<model.name>``)
  tagged with the architecture, its training choices, the source dataset, ``source_top1``,
  ``image_size``, ``input_mean`` / ``input_std`` (the per-channel normalisation it was trained
  on: ``synthetic.MEAN/STD`` for a synthetic source, the architecture's preprocessing for an
  on-disk one), ``recipe`` (:func:`pretrain_recipe`), ``suite.study``, ``suite.cell`` and
  ``run_id``; the registered model gets a description of the checkpoint
  (:func:`suite.tracking.checkpoint_description`).

Resume: the cell (a hash of the config without device/num_workers/data_root) is a version tag;
a version with the same cell is returned as is (``reused=True``), so a study never registers the
same checkpoint twice. Registration is the last step inside the run: a run killed before it
leaves no version, and a version registered just before a crash is still found by its cell.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from suite import tracking
from suite.config import ModelConfig, PretrainConfig, flatten
from suite.errors import SuiteError
from suite.progress import make_progress, resolve_device
from suite.train import (
    AUX_WEIGHT,
    cosine_schedule,
    cycle_batches,
    eval_loader,
    evaluate,
    make_optimizer,
    steps_per_epoch,
    to_device,
    train_steps,
)

# Config fields that change where/how fast a result is computed, not the result itself.
_NOT_IN_CELL = ("device", "num_workers", "data_root")
VTAG_RECIPE = "recipe"
# Flattened config fields that do not make two pretraining recipes differ (names, places,
# resources) or that are the training choices themselves; the rest (arch, width, depth, epochs,
# source, lr, batch size, seed, ...) is the recipe. The unprefixed names are how an MLflow
# Project run logs its entry point's parameters (``name``, ``bn_scale``, ...): the launcher logs
# them before the stage logs its config into the same run.
_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
RECIPE_IGNORE = frozenset({"model.name", "registered_name", "study", "skip_corrupt",
                           "skip_corrupt_flag", *_NOT_IN_CELL}
                          | {f"model.{c}" for c in tracking.VTAG_CHOICES})


@dataclass(frozen=True)
class PretrainResult:
    registered_name: str
    version: str
    source_top1: float  # percent, on the source test split
    run_id: str
    reused: bool  # True when an already registered version with the same cell was returned


def registered_name_of(cfg: PretrainConfig) -> str:
    """The registry name a pretraining config registers under."""
    return cfg.registered_name or tracking.registered_name(cfg.study, cfg.model.name)


def pretrain_cell(cfg: PretrainConfig) -> str:
    """The resume key of a pretraining config."""
    parts = {k: v for k, v in flatten(cfg).items() if k not in _NOT_IN_CELL}
    return tracking.cell_key(stage="pretrain", **parts)


def recipe_of_params(params: dict[str, str]) -> str | None:
    """The recipe hash of a pretraining run's params, in either layout: the in-process one
    (``flatten(cfg)``: ``model.epochs``, ``lr``, ...) or an MLflow Project run's, which adds the
    entry point's unprefixed parameters (``epochs``, ``bn_scale``, ``name``, ...). Unprefixed
    model fields are read as ``model.<field>`` (the stage's own ``model.*`` param wins), so
    both layouts of one config hash alike. None when nothing is left."""
    norm: dict[str, str] = {}
    for k, v in params.items():
        if k in _MODEL_FIELDS:
            k = f"model.{k}"
            if k in params:
                continue
        norm[k] = str(v)
    kept = {k: v for k, v in norm.items() if k not in RECIPE_IGNORE}
    return tracking.cell_key(**kept) if kept else None


def pretrain_recipe(cfg: PretrainConfig) -> str:
    """Hash of the pretraining config without the training choices, names and resources: two
    models with equal recipes differ only in those choices (the training-choice study pairs
    them). Recorded as the version tag ``recipe`` (:data:`VTAG_RECIPE`), so that the analysis
    reads the recipe from the config that ran, whichever launcher ran it."""
    return recipe_of_params(flatten(cfg))


def run_pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Train ``cfg.model`` on ``cfg.source`` for ``cfg.model.epochs`` epochs and register it
    (or return the version already registered for this exact config)."""
    name = registered_name_of(cfg)
    cell = pretrain_cell(cfg)
    found = tracking.find_version_by_cell(name, cell)
    if found is not None:
        return PretrainResult(name, str(found.version),
                              float(found.tags.get(tracking.VTAG_SOURCE_TOP1, "nan")),
                              found.run_id or found.tags.get("run_id", ""), reused=True)
    _check(cfg)

    tags = tracking.run_tags(cfg.study, "pretrain", model=name, dataset=cfg.source, cell=cell)
    with tracking.start_run(cfg.study, f"pretrain {cfg.model.name} on {cfg.source}", tags,
                            log_system_metrics=tracking.system_metrics_available()) as run:
        tracking.log_config(cfg)
        model, info, inputs, top1 = _train(cfg)
        mv = _register(model, name, cfg, cell, info, inputs, top1, run.info.run_id)
    return PretrainResult(name, str(mv.version), top1, run.info.run_id, reused=False)


def _check(cfg: PretrainConfig) -> None:
    m = cfg.model
    if m.epochs < 1:
        raise SuiteError(f"Model {m.name!r} has epochs={m.epochs}.", "Set epochs to 1 or more.")
    if not 0.0 <= m.label_smoothing < 1.0:
        raise SuiteError(f"Model {m.name!r} has label_smoothing={m.label_smoothing}.",
                         "Use a value in [0, 1), e.g. 0.1.")
    if not 0.0 <= m.dropout < 1.0:
        raise SuiteError(f"Model {m.name!r} has dropout={m.dropout}.",
                         "Use a probability in [0, 1), e.g. 0.2.")


def _train(cfg: PretrainConfig):
    """Train inside the active run; returns (model on CPU in eval mode, info, input tags
    (``image_size``, ``input_mean``, ``input_std``), source test top-1 in percent)."""
    import mlflow

    from suite.data import get_info, load_split, synthetic
    from suite.data.files import log_skipped
    from suite.models import (
        VTAG_INPUT_MEAN,
        VTAG_INPUT_STD,
        build_model,
        normalisation_of,
        preprocessing,
    )

    m = cfg.model
    device = resolve_device(cfg.device)
    info = get_info(cfg.source, root=cfg.data_root)
    if info.multilabel or info.num_classes < 2:
        kind = "multi-label" if info.multilabel else "single-class"
        raise SuiteError(
            f"Source dataset {cfg.source!r} is {kind}; pretraining needs a single-label "
            "classification task with at least 2 classes.",
            "Pick another source dataset (suite data list).")
    # Synthetic sets are fed as generated (normalised with synthetic.MEAN/STD); on-disk images
    # through the architecture's preprocessing. Either way the statistics are recorded.
    transform, stats = None, (synthetic.MEAN, synthetic.STD)
    if info.kind != "synthetic":
        transform, _ = preprocessing(m.arch)
        stats = normalisation_of(transform)
    split = {"root": cfg.data_root, "transform": transform, "seed": cfg.seed,
             "skip_corrupt": cfg.skip_corrupt}
    train, val, test = (load_split(cfg.source, s, **split) for s in ("train", "val", "test"))
    log_skipped([train, val, test], cfg.source)
    tracking.log_dataset_inputs(cfg.source, ("train", "val", "test"), root=cfg.data_root,
                                seed=cfg.seed, loaded={"train": train, "val": val, "test": test})
    val_loader = eval_loader(val, num_workers=cfg.num_workers)
    test_loader = eval_loader(test, num_workers=cfg.num_workers)
    inputs = {"image_size": int(train[0][0].shape[-1]),
              VTAG_INPUT_MEAN: ",".join(f"{v:g}" for v in stats[0]),
              VTAG_INPUT_STD: ",".join(f"{v:g}" for v in stats[1])}

    torch.manual_seed(cfg.seed)  # weight init and dropout masks follow the seed
    model = to_device(build_model(m.arch, info.num_classes, width=m.width, depth=m.depth,
                                  bn_scale=m.bn_scale, dropout=m.dropout, aux_head=m.aux_head),
                      device)
    per_epoch = steps_per_epoch(train, cfg.batch_size)
    total = per_epoch * m.epochs
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, total)
    batches = cycle_batches(train, cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers)

    top1 = float("nan")
    with make_progress() as bar:
        task = bar.add_task(f"pretrain {m.name} on {cfg.source}", total=total)
        for epoch in range(1, m.epochs + 1):
            loss = train_steps(model, batches, per_epoch, optimizer, scheduler, device=device,
                               label_smoothing=m.label_smoothing, aux_weight=AUX_WEIGHT,
                               on_step=lambda: bar.advance(task))
            val = evaluate(model, val_loader, info.metric, device)
            top1 = evaluate(model, test_loader, "top1", device)
            # One batched call per epoch; the history of source_top1 is the test curve.
            mlflow.log_metrics({"train_loss": loss, "val_accuracy": val, "source_top1": top1},
                               step=epoch)
    # Registered weights are plain NCHW CPU tensors, whatever device trained them.
    return model.to("cpu", memory_format=torch.contiguous_format).eval(), info, inputs, top1


def _register(model, name: str, cfg: PretrainConfig, cell: str, info, inputs: dict,
              top1: float, run_id: str):
    """Log the model artifact and register it (the last step of the run)."""
    from suite.models import log_and_register_model

    m = cfg.model
    tags = {
        tracking.VTAG_ARCH: m.arch,
        "width": m.width,
        "depth": m.depth,
        "bn_scale": m.bn_scale,
        "label_smoothing": m.label_smoothing,
        "dropout": m.dropout,
        "aux_head": m.aux_head,
        "num_classes": info.num_classes,
        **inputs,
        VTAG_RECIPE: pretrain_recipe(cfg),
        tracking.VTAG_SOURCE: cfg.source,
        tracking.VTAG_SOURCE_TOP1: top1,
        tracking.TAG_STUDY: cfg.study,
        tracking.TAG_CELL: cell,
        "run_id": run_id,
    }
    side = inputs["image_size"]
    example = torch.zeros(2, 3, side, side)  # (n, 3, H, W): the pt2 input example
    return log_and_register_model(model, name, tags, example)


__all__ = [
    "RECIPE_IGNORE",
    "VTAG_RECIPE",
    "PretrainResult",
    "pretrain_cell",
    "pretrain_recipe",
    "recipe_of_params",
    "run_pretrain",
]
