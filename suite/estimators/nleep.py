"""N-LEEP: LEEP with a Gaussian mixture on the features in place of the source head.

Source: Li, Jia, Zhu, Gong, Lu, Zhang, Wang, "Ranking Neural Checkpoints", CVPR 2021, §3.3.

1. PCA of the centred features, keeping the fewest leading components that explain 80% of the
   variance (scikit-learn's rule for ``PCA(n_components=0.8)``).
2. A Gaussian mixture with full covariances and ``component_ratio * K`` components (K target
   classes; default 5, the ratio of the Transfer-Learning-Library port, as the paper leaves the
   number open), fitted by EM as scikit-learn's ``GaussianMixture`` fits it: k-means
   initialisation, ``reg_covar = 1e-6`` on the diagonals, at most 100 iterations, stop when the
   mean log-likelihood changes by less than ``tol = 1e-3``.
3. LEEP (:func:`suite.estimators.source.leep`) with the mixture's posteriors as the "source
   probabilities".

Higher is better, at most 0. The k-means initialisation makes N-LEEP depend on ``seed``; the
EM itself is deterministic. It is the costly estimator (a full covariance per component), and
its score is not invariant to feature scaling exactly (``reg_covar`` is absolute).
"""

from __future__ import annotations

import math

import torch

from suite.estimators._common import as_features, as_labels, pca
from suite.estimators.source import leep

VARIANCE = 0.8
COMPONENT_RATIO = 5
REG_COVAR = 1e-6
MAX_ITER = 100
TOL = 1e-3
KMEANS_ITER = 20


def nleep(features, labels, *, variance: float = VARIANCE,
          component_ratio: int = COMPONENT_RATIO, seed: int = 0) -> float:
    """N-LEEP (module docstring). Higher is better."""
    f = as_features(features)
    n, _ = f.shape
    y, k = as_labels(labels, n, f.device)
    z = pca(f, variance=variance)  # (n, p)
    components = max(1, min(component_ratio * k, n))
    post = gmm_posteriors(z, components, seed=seed)
    return leep(post, y)


def _kmeans_resp(z: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """One-hot (n, k) assignment of k-means (k-means++ seeding, Lloyd iterations)."""
    n = z.shape[0]
    g = torch.Generator(device="cpu").manual_seed(seed)
    idx = [int(torch.randint(n, (1,), generator=g))]
    d2 = ((z - z[idx[0]]) ** 2).sum(1)
    for _ in range(1, k):
        p = (d2 / d2.sum()).cpu() if float(d2.sum()) > 0 else torch.full((n,), 1.0 / n)
        i = int(torch.multinomial(p, 1, generator=g))
        idx.append(i)
        d2 = torch.minimum(d2, ((z - z[i]) ** 2).sum(1))
    centres = z[idx].clone()
    assign = torch.zeros(n, dtype=torch.int64, device=z.device)
    for it in range(KMEANS_ITER):
        dist = torch.cdist(z, centres)
        new = dist.argmin(1)
        if it > 0 and bool((new == assign).all()):
            break
        assign = new
        for c in range(k):
            members = assign == c
            if bool(members.any()):
                centres[c] = z[members].mean(0)
    resp = torch.zeros((n, k), dtype=z.dtype, device=z.device)
    resp[torch.arange(n, device=z.device), assign] = 1.0
    return resp


def _m_step(z: torch.Tensor, resp: torch.Tensor, reg_covar: float):
    """(weights (k,), means (k, p), covariances (k, p, p)) from responsibilities (n, k), as
    scikit-learn's full-covariance M-step (``10 eps`` added to the counts)."""
    nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
    means = (resp.T @ z) / nk[:, None]
    k, p = means.shape
    cov = torch.empty((k, p, p), dtype=z.dtype, device=z.device)
    for c in range(k):
        diff = z - means[c]
        cov[c] = (resp[:, c:c + 1] * diff).T @ diff / nk[c]
        cov[c].diagonal().add_(reg_covar)
    return nk / z.shape[0], means, cov


def _e_step(z: torch.Tensor, weights, means, cov, chunk_elems: int = 2 ** 24):
    """(mean log-likelihood, log responsibilities (n, k))."""
    n, p = z.shape
    k = means.shape[0]
    chol = torch.linalg.cholesky(cov)  # (k, p, p)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)  # (k,)
    logp = torch.empty((n, k), dtype=z.dtype, device=z.device)
    step = max(1, chunk_elems // max(1, n * p))
    for a in range(0, k, step):
        b = min(a + step, k)
        diff = (z[None, :, :] - means[a:b, None, :]).transpose(1, 2)  # (c, p, n)
        sol = torch.linalg.solve_triangular(chol[a:b], diff, upper=False)
        logp[:, a:b] = (-0.5 * (sol ** 2).sum(1)).T  # (n, c)
    logp += -0.5 * (p * math.log(2 * math.pi) + logdet)[None, :] + torch.log(weights)[None, :]
    norm = torch.logsumexp(logp, dim=1)
    return float(norm.mean()), logp - norm[:, None]


def gmm_posteriors(z: torch.Tensor, k: int, *, seed: int = 0, reg_covar: float = REG_COVAR,
                   max_iter: int = MAX_ITER, tol: float = TOL, init=None) -> torch.Tensor:
    """Posteriors (n, k) of a full-covariance Gaussian mixture fitted by EM on rows ``z``.
    ``init``: (weights, means, covariances) to start from instead of k-means (tests)."""
    z = z.to(torch.float64)
    if init is None:
        weights, means, cov = _m_step(z, _kmeans_resp(z, k, seed), reg_covar)
    else:
        weights, means, cov = (torch.as_tensor(t, dtype=z.dtype, device=z.device)
                               for t in init)
    lower = -math.inf
    for _ in range(max_iter):
        prev = lower
        lower, log_resp = _e_step(z, weights, means, cov)
        weights, means, cov = _m_step(z, log_resp.exp(), reg_covar)
        if abs(lower - prev) < tol:
            break
    _, log_resp = _e_step(z, weights, means, cov)
    return log_resp.exp()
