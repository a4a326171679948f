"""Seeded splits: the stratified validation hold-out and Caltech-101's per-class train draw."""

from __future__ import annotations

import numpy as np


def stratified_holdout(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 0..n-1 into (train, val), holding out ``fraction`` of every class.

    Each class c with n_c examples gives ``round(fraction * n_c)`` to val (at least 1 when
    n_c >= 2, and never all of them), chosen by a permutation drawn from ``seed``. Multi-label
    targets (n, k) are stratified by their first positive class. Both index arrays are sorted.
    """
    y = _strata(labels)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n_val = int(round(fraction * idx.size))
        if idx.size >= 2:
            n_val = min(max(n_val, 1), idx.size - 1)
        else:
            n_val = 0
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(y.size, dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def per_class_draw(labels, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rest): ``per_class`` examples of every class drawn by ``seed``, and the others.

    Classes with fewer than ``per_class + 1`` examples keep at least one example in ``rest``.
    Used for Caltech-101 (30 training images per class, the rest test).
    """
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        chosen.append(rng.permutation(idx)[:min(per_class, max(idx.size - 1, 0))])
    chosen_idx = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    mask = np.ones(y.size, dtype=bool)
    mask[chosen_idx] = False
    return chosen_idx, np.flatnonzero(mask)


def _strata(labels) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim == 2:  # multi-label 0/1 (n, k): first positive class, k if none
        has = y.max(axis=1) > 0
        return np.where(has, y.argmax(axis=1), y.shape[1])
    return y
