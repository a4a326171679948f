"""Transferability estimators of one (model version, dataset), from the probe's cached features.

Reads: the training split's cached features (:func:`suite.features.extract`) and, for LEEP and
NCE, the source head's probabilities on them (:func:`suite.features.source_probs`).
Writes, on the probe run: metrics ``estimator.<name>`` (higher = better) and
``estimator.<name>.seconds``; for an estimator that could not score this pair (no source head,
multi-label targets, a single class) a tag ``suite.estimator.<name>`` with the reason instead.

The estimators are scored on the target *training* split, the literature's convention. They
are not part of the probe's cell key (:func:`suite.probe.probe_cell`): a finished probe run
that lacks some of the requested estimators (made before they existed, or with another list)
gets them logged onto it when the probe cell is reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from suite import tracking
from suite.config import ProbeConfig

METRIC = "estimator."
TAG = "suite.estimator."


@dataclass
class Scores:
    """Estimator values of one split: {name: (value, seconds)} and why others are missing."""

    values: dict[str, tuple[float, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason


def score_split(mv, dataset: str, x: np.ndarray, y: np.ndarray, names, *, root: str = "",
                device="cpu", seed: int = 0, val_fraction: float = 0.2,
                split: str = "train") -> Scores:
    """Every estimator in ``names`` on (x, y) of ``split``; source probabilities only when
    some estimator needs them."""
    import torch

    from suite import features
    from suite.estimators import ESTIMATORS, check_names, compute_all

    names = check_names(names)
    out = Scores()
    probs = None
    if any(ESTIMATORS[n].needs_source for n in names):
        probs = features.source_probs(mv, dataset, split, x, root=root, device=device,
                                      seed=seed, val_fraction=val_fraction)
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    notes: list[str] = []
    xt = torch.from_numpy(x).to(dev)
    pt = torch.from_numpy(probs).to(dev) if probs is not None else None
    out.values = compute_all(xt, torch.from_numpy(y), pt, names=names, notes=notes)
    for note in notes:
        name, _, why = note.partition(": ")
        out.skipped[name] = why
    return out


def log_scores(run_id: str, scores: Scores) -> None:
    """Metrics ``estimator.<name>`` / ``.seconds`` and ``suite.estimator.<name>`` tags."""
    from mlflow.entities import Metric, RunTag
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    metrics = []
    for name, (value, seconds) in scores.values.items():
        metrics.append(Metric(f"{METRIC}{name}", float(value), now, 0))
        metrics.append(Metric(f"{METRIC}{name}.seconds", float(seconds), now, 0))
    tags = [RunTag(f"{TAG}{name}", why[:4000]) for name, why in scores.skipped.items()]
    if metrics or tags:
        tracking.client().log_batch(run_id, metrics=metrics, tags=tags)


def missing(run, names) -> list[str]:
    """Estimators of ``names`` that ``run`` has neither a metric nor a skip reason for."""
    m, t = run.data.metrics, run.data.tags
    return [n for n in names if f"{METRIC}{n}" not in m and f"{TAG}{n}" not in t]


def estimate_for_probe(cfg: ProbeConfig, mv, info, x: np.ndarray, y: np.ndarray, device,
                       run_id: str) -> Scores:
    """Score ``cfg.estimators`` on the training split (x, y) and log them onto ``run_id``."""
    scores = score_split(mv, info.name, x, y, cfg.estimators, root=cfg.data_root,
                         device=device, seed=cfg.seed, val_fraction=cfg.val_fraction)
    log_scores(run_id, scores)
    return scores


def complete_reused(cfg: ProbeConfig, mv, info, run) -> Scores | None:
    """On a reused probe run: score and log the requested estimators it lacks (module
    docstring); None when it has them all."""
    from suite import features
    from suite.progress import resolve_device

    todo = missing(run, cfg.estimators)
    if not todo:
        return None
    device = resolve_device(cfg.device)
    x, y = features.extract(mv, info.name, "train", root=cfg.data_root, device=device,
                            batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                            seed=cfg.seed, val_fraction=cfg.val_fraction,
                            decode=cfg.decode.value, skip_corrupt=cfg.skip_corrupt)
    scores = score_split(mv, info.name, x, y, todo, root=cfg.data_root, device=device,
                         seed=cfg.seed, val_fraction=cfg.val_fraction)
    log_scores(run.info.run_id, scores)
    return scores


__all__ = ["METRIC", "TAG", "Scores", "complete_reused", "estimate_for_probe", "log_scores",
           "missing", "score_split"]
