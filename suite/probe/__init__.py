"""Stage ``probe``: fixed-feature L2 logistic regression on penultimate features.

Reads: a registered model version (``models:/<name>/<version>``), the dataset's train/val/test
splits, the feature cache (``<workspace>/features/...``; filled on first use).
Writes: the feature cache, and one MLflow run ``probe <model> on <dataset>`` (tags stage=probe,
setting=logistic, model, model_version, dataset; the train/val/test splits as dataset inputs)
with params = the ProbeConfig, metrics ``test_accuracy``,
``val_accuracy`` (percent, by the dataset's metric), ``selected_l2``, ``fit_seconds``,
``extract_seconds``, ``estimator.<name>`` and ``estimator.<name>.seconds`` for the
transferability estimators of ``cfg.estimators`` on the training split
(:mod:`suite.probe.estimate`), and the artifact ``probe_sweep.csv`` (validation accuracy per
l2). The estimators are not part of the cell key; a reused run lacking some gets them added.

Protocol (the paper's): 45 log-spaced l2 values from 1e-6 to 1e5, chosen on the validation split
(the dataset's own, else a seeded stratified hold-out of train), refit on train+val, scored on
test. The solver lives in :mod:`suite.probe.solver`. ``search`` (a run param) says how the grid
was walked: ``exhaustive`` (default) fits and scores every value; ``adaptive`` is an
approximation that can select a worse value (``l2_values_fitted`` < 45 shows it stopped early).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from suite import tracking
from suite.config import ProbeConfig, Setting, flatten


@dataclass(frozen=True)
class ProbeResult:
    run_id: str
    selected_l2: float
    val_accuracy: float  # percent
    test_accuracy: float  # percent
    reused: bool


def probe_cell(cfg: ProbeConfig, model_name: str, version: str, inputs: str = "") -> str:
    """What defines a probe result (resume key): everything but where/how fast it runs, plus
    ``inputs`` (:func:`suite.features.input_plan_id`: how the images are turned into the
    network's inputs)."""
    params = flatten(cfg)
    params["inputs"] = inputs
    for k in ("device", "data_root", "num_workers", "batch_size", "study", "model_version",
              "backend", "decode", "estimators"):
        params.pop(k, None)
    return tracking.cell_key(stage="probe", model=model_name, version=version, **params)


def run_probe(cfg: ProbeConfig) -> ProbeResult:
    """Fit the fixed-feature protocol for one (model version, dataset) and log it."""
    import mlflow

    from suite import data, features
    from suite.probe.solver import fit_protocol
    from suite.progress import resolve_device

    mv = tracking.get_version(cfg.model_name, cfg.model_version)
    info = data.get_info(cfg.dataset, cfg.data_root)
    cell = probe_cell(cfg, mv.name, str(mv.version), features.input_plan_id(mv, info))
    done = tracking.find_finished_run(cfg.study, cell)
    if done is not None:
        if cfg.estimators:  # a run from before the estimators (or another list): complete it
            from suite.probe.estimate import complete_reused

            complete_reused(cfg, mv, info, done)
        m = done.data.metrics
        return ProbeResult(done.info.run_id, m.get("selected_l2", float("nan")),
                           m.get("val_accuracy", float("nan")),
                           m.get("test_accuracy", float("nan")), reused=True)
    device = resolve_device(cfg.device)
    tags = tracking.run_tags(cfg.study, "probe", model=mv.name, model_version=str(mv.version),
                             dataset=info.name, setting=Setting.logistic.value, cell=cell)
    tags["suite.model_uri"] = f"models:/{mv.name}/{mv.version}"
    run_name = f"probe {tracking.model_label(mv.name, cfg.study)} on {info.name}"
    with tracking.start_run(cfg.study, run_name, tags) as run:
        tracking.log_config(cfg)
        tracking.log_dataset_inputs(info.name, ("train", "val", "test"), root=cfg.data_root,
                                    seed=cfg.seed, val_fraction=cfg.val_fraction)
        t0 = time.perf_counter()
        xs = {}
        for split in ("train", "val", "test"):
            xs[split] = features.extract(
                mv, info.name, split, root=cfg.data_root, device=device,
                batch_size=cfg.batch_size, num_workers=cfg.num_workers, seed=cfg.seed,
                val_fraction=cfg.val_fraction, decode=cfg.decode.value,
                skip_corrupt=cfg.skip_corrupt)
        extract_s = time.perf_counter() - t0
        fit = fit_protocol(*xs["train"], *xs["val"], *xs["test"], l2_grid=cfg.l2_grid,
                           backend=cfg.backend, metric=info.metric, device=device,
                           search=cfg.search.value)
        mlflow.log_metrics({
            "test_accuracy": fit.test_accuracy, "val_accuracy": fit.val_accuracy,
            "selected_l2": fit.selected_l2, "fit_seconds": fit.seconds,
            "extract_seconds": extract_s, "feature_dim": float(xs["train"][0].shape[1]),
            "n_train": float(len(xs["train"][0])), "l2_values_fitted": float(len(fit.sweep)),
        })
        mlflow.set_tag("suite.probe_backend", fit.backend)
        if cfg.estimators:
            from suite.probe.estimate import estimate_for_probe

            estimate_for_probe(cfg, mv, info, *xs["train"], device, run.info.run_id)
        lines = ["l2,val_accuracy"] + [f"{l2:.6g},{acc:.4f}" for l2, acc in fit.sweep]
        mlflow.log_text("\n".join(lines) + "\n", "probe_sweep.csv")
    return ProbeResult(run.info.run_id, fit.selected_l2, fit.val_accuracy, fit.test_accuracy,
                       reused=False)
