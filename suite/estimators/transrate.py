"""TransRate: the coding-rate gain of the features given the labels.

Source: Huang, Huang, Zhang, Zhang, Jin, Shao, "Frustratingly Easy Transferability Estimation",
ICML 2022, eq. (4)-(6); reference code Long-Kai/TransRate (``coding_rate``, ``transrate``).

Features are centred with their mean; with the reference's coding rate

    R(Z, eps) = 1/2 log det( I_d + 1/(n eps) Z^T Z )          (Z (n, d), eps = 1e-4)

(the paper writes ``d / (n eps^2)``; the code's constant is kept, as published scores use it),

    TransRate = R(Z, eps) - sum_y w_y R(Z_y, eps),     Z_y = the rows of class y,

where ``R(Z_y, eps)`` uses ``n_y`` in its constant. ``class_weight="size"`` (default):
``w_y = n_y / n``, the paper's conditional rate; ``"uniform"``: ``w_y = 1/K``, what the
reference code does (the two agree on balanced classes). Higher is better. Not invariant to
feature scaling (``eps`` is absolute). By Sylvester's identity the determinant is taken on the
smaller of ``Z^T Z`` and ``Z Z^T``.
"""

from __future__ import annotations

import torch

from suite.errors import SuiteError
from suite.estimators._common import as_features, as_labels, logdet_spd

EPS = 1e-4


def coding_rate(z: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """R(Z, eps) = 1/2 log det(I + Z^T Z / (n eps)) of rows ``z`` (n, d), as given."""
    n, d = z.shape
    g = z.T @ z if n >= d else z @ z.T  # det(I_d + c Z^T Z) = det(I_n + c Z Z^T)
    g = 0.5 * (g + g.T) / (n * eps)
    g.diagonal().add_(1.0)
    return 0.5 * logdet_spd(g)


def transrate(features, labels, *, eps: float = EPS, class_weight: str = "size") -> float:
    """TransRate (module docstring). Higher is better."""
    if class_weight not in ("size", "uniform"):
        raise SuiteError(f"Unknown TransRate class_weight {class_weight!r}.",
                         "Use size (n_y / n, the paper's) or uniform (1/K, the reference "
                         "code's).")
    f = as_features(features)
    n, _ = f.shape
    y, k = as_labels(labels, n, f.device)
    z = f - f.mean(0)
    total = coding_rate(z, eps)
    order = torch.argsort(y)
    counts = torch.bincount(y, minlength=k).tolist()
    conditional = torch.zeros((), dtype=z.dtype, device=z.device)
    for c, zc in enumerate(torch.split(z[order], counts)):
        w = counts[c] / n if class_weight == "size" else 1.0 / k
        conditional = conditional + w * coding_rate(zc, eps)
    return float(total - conditional)
