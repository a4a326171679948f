"""SFDA, self-challenging Fisher discriminant analysis.

Source: Shao, Zhao, Zhao, Guo, Wang, Luo, "Not All Models Are Equal: Predicting Model
Transferability in a Self-challenging Fisher Space", ECCV 2022; reference code TencentARC/SFDA
(``SFDA_Score``, class ``SFDA``).

1. **Regularised FDA.** Within-class scatter ``S_w = sum_c pi_c cov_c`` (ddof 0, ``pi_c`` the
   class frequency), shrunk towards a scaled identity,
   ``S_w(lam) = (1 - lam) S_w + lam tr(S_w)/d I``, with the adaptive strength
   ``lam = max(exp(-5 lambda_max(S_w)), 1e-10)``, ``lambda_max`` from 3 power iterations as the
   reference computes it. Class scores ``x^T W^T mu_c - 1/2 mu_c^T W^T mu_c + log pi_c`` with
   ``W = V V^T`` for the generalised eigenvectors ``V`` of ``(S_b, S_w(lam))``; being
   ``S_w(lam)``-orthonormal and square, ``V V^T = S_w(lam)^-1``, so the scores are those of
   linear discriminant analysis with the shrunk covariance (solved here with one Cholesky
   factorisation instead of the generalised eigenproblem). ``p(y | x)`` = their softmax.
2. **ConfMix.** Soften: ``q = softmax(p(. | x))`` (a softmax of the probabilities, as the
   reference does); each example moves towards the mean of the *other* classes' means by its
   confidence: ``x <- q_y x + (1 - q_y) mean_{c != y} mu_c``.
3. Refit step 1 on the mixed features with the same ``lam``; SFDA = mean over examples of the
   probability of the true class (the reference drops the log, "in case of instability").

Higher is better, in (0, 1]. **Saturation:** with few examples and many dimensions the
classes are linearly separable, the probabilities are one-hot and SFDA = 1.0 for every model
(n = 40, d = 512, 4 classes already does it); the score then ranks nothing. Not invariant to
feature scaling (``lam`` depends on ``lambda_max``).
"""

from __future__ import annotations

import math

import torch

from suite.estimators._common import as_features, as_labels, class_means

POWER_ITERATIONS = 3  # the reference's iterative_A(max_iterations=3)


def _largest_eigenvalue(a: torch.Tensor, iterations: int = POWER_ITERATIONS) -> float:
    """The reference's ``iterative_A``: x = A 1; repeat {y = Ax/|Ax|; x = Ay/|Ay|}; x^T A y."""
    x = a.sum(1)
    y = x
    for _ in range(iterations):
        t = a @ x
        y = t / torch.linalg.vector_norm(t)
        t = a @ y
        x = t / torch.linalg.vector_norm(t)
    return float(x @ (a @ y))


def _fda_probs(x: torch.Tensor, y: torch.Tensor, k: int, shrinkage: float | None
               ) -> tuple[torch.Tensor, float]:
    """(p(y | x) (n, K) of the regularised FDA fitted on (x, y), the shrinkage used)."""
    n, d = x.shape
    means, counts = class_means(x, y, k)  # (K, d)
    priors = counts / n
    xw = x - means[y]  # within-class deviations
    sw = xw.T @ xw / n  # sum_c pi_c cov_c  (d, d)
    sw = 0.5 * (sw + sw.T)
    if shrinkage is None:
        shrinkage = max(math.exp(-5.0 * _largest_eigenvalue(sw)), 1e-10)
    mu = torch.diagonal(sw).sum() / d
    shrunk = (1.0 - shrinkage) * sw + shrinkage * mu * torch.eye(d, dtype=x.dtype,
                                                                 device=x.device)
    chol, info = torch.linalg.cholesky_ex(shrunk)
    if int(info) == 0:
        coef = torch.cholesky_solve(means.T, chol).T  # (K, d) = means S_w^-1
    else:  # numerically singular: the pseudo-inverse
        coef = (torch.linalg.pinv(shrunk, hermitian=True) @ means.T).T
    intercept = -0.5 * (means * coef).sum(1) + torch.log(priors)
    return torch.softmax(x @ coef.T + intercept, dim=1), shrinkage


def sfda(features, labels) -> float:
    """SFDA (module docstring): mean probability of the true class after ConfMix. Higher is
    better; saturates at 1.0 on small, high-dimensional datasets."""
    f = as_features(features)
    n, d = f.shape
    y, k = as_labels(labels, n, f.device)
    probs, lam = _fda_probs(f, y, k, None)
    soft = torch.softmax(probs, dim=1)  # "soften" (the reference's exp(prob) / sum exp(prob))
    means, _ = class_means(f, y, k)
    others = (means.sum(0) - means) / (k - 1)  # (K, d): mean of the other classes' means
    q = soft[torch.arange(n, device=f.device), y][:, None]
    mixed = q * f + (1 - q) * others[y]
    probs2, _ = _fda_probs(mixed, y, k, lam)
    return float(probs2[torch.arange(n, device=f.device), y].mean())
