"""Features for testing and benchmarking the probe solver.

``make_features`` draws penultimate-layer-like features of realistic difficulty, so that the
protocol behaves as it does on real networks: the validation accuracy peaks at a regularisation
strictly inside the paper's grid and test accuracy lands well below 100 %.

Generative model (all shapes per example; ``r`` latent dimensions, ``d`` features):

    h   = mu[y] + z,              mu (classes, r) ~ N(0, sep^2),  z ~ N(0, I_r)       (r,)
    x   = relu(h @ A + e @ B + c)                                                     (d,)

``A`` (r, d) mixes the class signal into all features; ``e @ B`` is nuisance noise with a
decaying spectrum (``B`` has singular values ~ j^-0.5 over ``r_noise`` directions), which makes
XᵀX anisotropic like real CNN features; the ReLU makes features non-negative and sparse-ish.
A fraction ``label_noise`` of labels (in every split) is redrawn uniformly, which caps the
attainable accuracy and makes weak regularisation overfit.

``load_features_npz`` reads the same six arrays from an ``.npz`` file (e.g. cached features).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from suite.errors import SuiteError

SPLIT_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


@dataclass(frozen=True)
class Features:
    """The six arrays of the protocol. x_*: (n, d) float32; y_*: (n,) int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def as_tuple(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, k) for k in SPLIT_KEYS)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_train, d, classes)."""
        return self.x_train.shape[0], self.x_train.shape[1], int(self.y_train.max()) + 1


def make_features(n_train: int, n_val: int, n_test: int, d: int, classes: int, seed: int = 0, *,
                  latent: int = 48, separation: float = 0.55, label_noise: float = 0.1,
                  noise_rank: int = 256) -> Features:
    """Draw a train/val/test feature set (see the module docstring for the model).

    Every class gets at least one training example (labels are drawn balanced, then shuffled),
    so the sets always pass ``validate_features``.
    """
    rng = np.random.default_rng(seed)
    r = min(latent, d)
    q = min(noise_rank, d)
    mu = rng.normal(0.0, separation, (classes, r))  # (classes, r) class means in latent space
    a = rng.normal(0.0, 1.0 / np.sqrt(r), (r, d))  # (r, d) signal mixing
    spectrum = 1.5 * (np.arange(1, q + 1) ** -0.5)  # decaying noise spectrum
    b = rng.normal(0.0, 1.0 / np.sqrt(d), (q, d)) * np.sqrt(d) / np.sqrt(q)  # (q, d)
    b *= spectrum[:, None]
    offset = rng.normal(0.0, 0.3, d)  # per-feature bias before the ReLU: varied sparsity

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % classes
        rng.shuffle(y)
        h = mu[y] + rng.normal(size=(n, r))
        e = rng.normal(size=(n, q))
        x = np.maximum(h @ a + e @ b + offset, 0.0).astype(np.float32)
        flip = rng.random(n) < label_noise
        y = np.where(flip, rng.integers(0, classes, n), y)
        return x, y.astype(np.int64)

    xtr, ytr = draw(n_train)
    # A flipped label may have emptied a class of train: put one clean example back.
    missing = np.setdiff1d(np.arange(classes), ytr)
    ytr[: missing.size] = missing if missing.size <= n_train else missing[:n_train]
    xva, yva = draw(n_val)
    xte, yte = draw(n_test)
    return Features(xtr, ytr, xva, yva, xte, yte)


def load_features_npz(path: str | Path) -> Features:
    """Read ``x_train, y_train, x_val, y_val, x_test, y_test`` from an ``.npz`` file."""
    path = Path(path)
    if not path.exists():
        raise SuiteError(f"Features file {path} does not exist.",
                         "Pass the path of an .npz file with arrays " + ", ".join(SPLIT_KEYS) + ".")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in SPLIT_KEYS if k not in f.files]
            if missing:
                raise SuiteError(
                    f"Features file {path} lacks the array(s) {', '.join(missing)} "
                    f"(it has: {', '.join(f.files) or 'none'}).",
                    "Save it with np.savez(path, x_train=..., y_train=..., x_val=..., y_val=..., "
                    "x_test=..., y_test=...).")
            arrays = {k: f[k] for k in SPLIT_KEYS}
    except SuiteError:
        raise
    except Exception as e:  # not a zip / corrupt
        raise SuiteError(f"Cannot read features file {path}: {e}.",
                         "Check that it is an .npz written by numpy.savez.") from None
    for k in SPLIT_KEYS:
        if k.startswith("x_"):
            arrays[k] = np.ascontiguousarray(arrays[k], dtype=np.float32)
    return Features(**arrays)


__all__ = ["Features", "make_features", "load_features_npz", "SPLIT_KEYS"]
