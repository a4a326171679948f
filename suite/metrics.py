"""Transfer metrics of the paper, in percent.

- ``top1``: plain accuracy (most datasets).
- ``mean_per_class``: mean over classes of per-class recall (FGVC Aircraft, Oxford-IIIT Pets,
  Caltech-101, Oxford 102 Flowers).
- ``map11``: PASCAL VOC2007 11-point interpolated mean average precision (multi-label).
"""

from __future__ import annotations

import numpy as np

METRICS = ("top1", "mean_per_class", "map11")


def top1(scores: np.ndarray, y: np.ndarray) -> float:
    """scores (n, k), y (n,) int -> percent correct."""
    return float(100.0 * np.mean(np.asarray(scores).argmax(1) == np.asarray(y)))


def mean_per_class(scores: np.ndarray, y: np.ndarray) -> float:
    """Mean over the classes present in ``y`` of the fraction of that class predicted right."""
    y = np.asarray(y)
    pred = np.asarray(scores).argmax(1)
    classes = np.unique(y)
    recalls = [np.mean(pred[y == c] == c) for c in classes]
    return float(100.0 * np.mean(recalls))


def average_precision_11(scores: np.ndarray, targets: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP of one class: scores (n,), targets (n,) in {0, 1}."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    t = np.asarray(targets)[order] > 0
    npos = t.sum()
    if npos == 0:
        return float("nan")
    tp = np.cumsum(t)
    fp = np.cumsum(~t)
    recall = tp / npos
    precision = tp / np.maximum(tp + fp, 1)
    ap = 0.0
    for thr in np.linspace(0, 1, 11):
        p = precision[recall >= thr]
        ap += (p.max() if p.size else 0.0) / 11
    return float(ap)


def map11(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean of 11-point AP over classes with at least one positive; scores, targets (n, k)."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    aps = [average_precision_11(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(100.0 * np.mean(aps)) if aps else float("nan")


def score(metric: str, scores: np.ndarray, y: np.ndarray) -> float:
    """Dispatch on the dataset's metric name."""
    if metric == "top1":
        return top1(scores, y)
    if metric == "mean_per_class":
        return mean_per_class(scores, y)
    if metric == "map11":
        return map11(scores, y)
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
