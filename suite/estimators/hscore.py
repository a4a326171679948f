"""H-score and its shrinkage-regularised form.

H-score. Source: Bao, Li, Huang, Zheng, Wornell, "An Information-Theoretic Approach to
Transferability in Task Transfer Learning", ICIP 2019, eq. (4); the reference definition of
thuml/Transfer-Learning-Library ``tllib/ranking/hscore.py``::

    H(f) = tr( cov(f)^+ cov(E[f | y]) )

with ``cov`` the sample covariance (ddof 1; it cancels in the ratio), ``E[f | y]`` each
example's class mean, and ``^+`` the pseudo-inverse. Higher is better; invariant to any
invertible linear map of the features (scaling included) while ``cov(f)`` has full rank.

**Pseudo-inverse cut-off.** The reference calls ``numpy.linalg.pinv(cov, rcond=1e-15)``. When
``cov(f)`` is singular (n <= d, or collinear features), its zero eigenvalues come out of the
decomposition as rounding noise of about ``d * eps * lambda_max``, above 1e-15 relative, so the
reference inverts noise and the score depends on rounding. The default cut-off here is
``max(n, d) * eps`` relative (numpy's ``matrix_rank`` rule), which treats those directions as
null; ``rcond=1e-15`` reproduces the reference. With a well-conditioned covariance both agree.

Shrinkage H-score. Source: Ibrahim, Ponomareva, Mazumder, "Newer is not always better:
Rethinking transferability metrics, their peculiarities, stability and performance", ECML-PKDD
2022, eq. (7); reference definition ``regularized_h_score`` of the same library::

    H_alpha(f) = tr( ((1 - alpha) S + alpha mu I)^-1 (1 - alpha) cov(E[f | y]) )

with ``S`` the maximum-likelihood covariance (ddof 0) of the centred features, ``mu = tr(S)/d``
and ``alpha`` the Ledoit-Wolf shrinkage (Ledoit & Wolf 2004; scikit-learn's
``ledoit_wolf_shrinkage`` formula); ``cov(E[f | y])`` keeps ddof 1 as the reference does.
Higher is better; invariant to a global rescaling of the features (alpha is).
"""

from __future__ import annotations

import torch

from suite.estimators._common import EPS64, as_features, as_labels, class_means, gram, pinv_psd


def _between(f: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(class means minus the grand mean (K, d), the weights n_c / (n - 1) (K,)): the
    covariance of E[f | y] is ``D^T diag(w) D``."""
    n = f.shape[0]
    means, counts = class_means(f, y, k)
    return means - f.mean(0), counts / (n - 1)


def hscore(features, labels, *, rcond: float | None = None) -> float:
    """H-score ``tr(cov(f)^+ cov(E[f|y]))`` (module docstring). Higher is better.
    ``rcond``: pseudo-inverse cut-off relative to the largest eigenvalue; None =
    ``max(n, d) * eps``; the reference's is 1e-15."""
    f = as_features(features)
    n, d = f.shape
    y, k = as_labels(labels, n, f.device)
    fc = f - f.mean(0)
    cov = gram(fc) / (n - 1)  # (d, d)
    inv, v = pinv_psd(cov, max(n, d) * EPS64 if rcond is None else rcond)
    dm, w = _between(f, y, k)  # (K, d), (K,)
    proj = dm @ v  # (K, d) in the eigenbasis
    # tr(cov^+ D^T diag(w) D) = sum_c w_c sum_j proj_cj^2 / lambda_j
    return float((w[:, None] * proj ** 2 * inv[None, :]).sum())


def ledoit_wolf_shrinkage(x: torch.Tensor) -> float:
    """Ledoit-Wolf shrinkage of the covariance of rows ``x`` (n, d), centred here (the formula
    of scikit-learn's ``ledoit_wolf_shrinkage``)::

        S = X^T X / n,  mu = tr(S) / d,
        b = (sum_i ||x_i||^4 / n - ||S||_F^2) / (n d),   delta = ||S - mu I||_F^2 / d,
        alpha = min(b, delta) / delta
    """
    n, d = x.shape
    if d == 1:
        return 0.0
    xc = x - x.mean(0)
    s = gram(xc) / n
    mu = torch.diagonal(s).sum() / d
    fro2 = (s ** 2).sum()
    beta_ = ((xc ** 2).sum(1) ** 2).sum()  # sum of X2^T X2 = sum_i ||x_i||^4
    b = (beta_ / n - fro2) / (d * n)
    delta = (fro2 - 2 * mu * torch.diagonal(s).sum() + d * mu ** 2) / d
    b = torch.minimum(b, delta)
    return 0.0 if float(b) == 0.0 else float(b / delta)


def hscore_shrinkage(features, labels) -> float:
    """Shrinkage-regularised H-score with the Ledoit-Wolf alpha (module docstring). Higher is
    better."""
    f = as_features(features)
    n, d = f.shape
    y, k = as_labels(labels, n, f.device)
    fc = f - f.mean(0)
    alpha = ledoit_wolf_shrinkage(fc)
    s = gram(fc) / n
    mu = torch.diagonal(s).sum() / d
    shrunk = (1 - alpha) * s + alpha * mu * torch.eye(d, dtype=f.dtype, device=f.device)
    inv, v = pinv_psd(shrunk, 1e-15)  # full rank whenever alpha > 0; the reference's pinv
    dm, w = _between(fc, y, k)
    proj = dm @ v
    return float((1 - alpha) * (w[:, None] * proj ** 2 * inv[None, :]).sum())
