"""GBC, the Gaussian Bhattacharyya coefficient.

Source: Pándy, Agostinelli, Uijlings, Ferrari, Mensink, "Transferability Estimation using
Bhattacharyya Class Separability", CVPR 2022, eq. (1)-(4); reference code google-research
``stable_transfer/transferability/gbc.py``.

Features are first reduced by PCA (64 dimensions in the paper's experiments; ``pca_dim``). Each
target class c gets a Gaussian with the class mean ``mu_c`` and the diagonal of its covariance
``v_c`` (ddof 0; ``gaussian="spherical"``: the mean of that diagonal in every dimension). For two
classes, with ``v = (v_i + v_j) / 2``, the Bhattacharyya distance and coefficient are

    D_B(i, j) = 1/8 sum_k (mu_ik - mu_jk)^2 / v_k + 1/2 sum_k log( v_k / sqrt(v_ik v_jk) )
    BC(i, j) = exp(-D_B(i, j)),            GBC = - sum_i sum_{j != i} BC(i, j)

(every ordered pair, as the reference sums). GBC <= 0; higher (closer to 0: classes overlap
less) is better. Invariant to a global rescaling of the features.

Variances are floored at ``1e-10`` times the mean feature variance, so that a one-example class
or a constant dimension gives a finite (large) distance instead of ``log 0``.
"""

from __future__ import annotations

import torch

from suite.errors import SuiteError
from suite.estimators._common import as_features, as_labels, class_means, pca

PCA_DIM = 64
VAR_FLOOR = 1e-10  # relative to the mean variance of the (reduced) features


def gbc(features, labels, *, pca_dim: int | None = PCA_DIM, gaussian: str = "diagonal",
        chunk: int = 64) -> float:
    """GBC (module docstring). ``pca_dim``: PCA dimensions (None: the features as they are).
    Higher (closer to 0) is better."""
    if gaussian not in ("diagonal", "spherical"):
        raise SuiteError(f"Unknown GBC Gaussian {gaussian!r}.", "Use diagonal or spherical.")
    f = as_features(features)
    n, d = f.shape
    y, k = as_labels(labels, n, f.device)
    z = pca(f, components=pca_dim) if pca_dim is not None and pca_dim < d else f
    mu, _ = class_means(z, y, k)  # (K, p)
    var, _ = class_means((z - mu[y]) ** 2, y, k)  # (K, p), ddof 0
    if gaussian == "spherical":
        var = var.mean(1, keepdim=True).expand_as(var)
    var = var.clamp_min(VAR_FLOOR * float(z.var(0, unbiased=False).mean().clamp_min(1e-300)))
    logv = torch.log(var).sum(1)  # (K,)
    total = torch.zeros((), dtype=z.dtype, device=z.device)
    for a in range(0, k, chunk):  # (c, K, p) blocks: bounded memory for many classes
        avg = 0.5 * (var[a:a + chunk, None, :] + var[None, :, :])
        dist = (0.125 * ((mu[a:a + chunk, None, :] - mu[None, :, :]) ** 2 / avg).sum(2)
                + 0.5 * torch.log(avg).sum(2)
                - 0.25 * (logv[a:a + chunk, None] + logv[None, :]))
        bc = torch.exp(-dist)
        rows = torch.arange(a, min(a + chunk, k), device=z.device)
        bc[rows - a, rows] = 0.0  # i == j left out
        total = total + bc.sum()
    return float(-total)
