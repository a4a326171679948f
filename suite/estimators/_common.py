"""Input checks and small linear-algebra helpers shared by the estimators.

Every estimator takes torch tensors (or anything ``torch.as_tensor`` accepts) on any device and
computes in float64 on that device. Labels are remapped to ``0..K-1`` in sorted order of their
values (classes absent from the split do not exist for an estimator).
"""

from __future__ import annotations

import torch

from suite.errors import SuiteError

EPS64 = torch.finfo(torch.float64).eps


def as_features(features, what: str = "features") -> torch.Tensor:
    """(n, d) float64 on the input's device; NaN/inf and wrong shapes raise SuiteError."""
    f = torch.as_tensor(features)
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
        raise SuiteError(f"The {what} must be a non-empty (n, d) matrix, got shape "
                         f"{tuple(f.shape)}.",
                         "Pass one row per example (penultimate features or source-head "
                         "probabilities).")
    f = f.to(torch.float64)
    bad = ~torch.isfinite(f)
    if bool(bad.any()):
        rows = int(bad.any(dim=1).sum())
        raise SuiteError(f"The {what} contain NaN or inf ({rows} of {f.shape[0]} rows).",
                         "Re-extract the features (a broken checkpoint or unnormalised inputs "
                         "give NaN features); an estimator cannot score them.")
    return f


def as_labels(labels, n: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """(labels (n,) int64 in 0..K-1 on ``device``, K). Multi-label targets and a single class
    raise SuiteError."""
    y = torch.as_tensor(labels)
    if y.ndim == 2:
        raise SuiteError("The transferability estimators are defined for single-label "
                         "classification; these labels are multi-label (n, k).",
                         "Leave the estimators out for multi-label datasets (VOC2007).")
    if y.ndim != 1 or y.shape[0] != n:
        raise SuiteError(f"Expected {n} labels (one per feature row), got shape "
                         f"{tuple(y.shape)}.", "Pass the labels of the same split as the "
                         "features.")
    if y.is_floating_point():
        if not bool(torch.all(y == torch.round(y))):
            raise SuiteError("Labels must be class indices (integers).",
                             "Pass integer class labels.")
    classes, inv = torch.unique(y.to(device), return_inverse=True)
    k = int(classes.numel())
    if k < 2:
        raise SuiteError(f"The labels contain a single class ({k} distinct value); every "
                         "transferability estimator compares classes.",
                         "Score a dataset with at least two classes.")
    return inv.to(torch.int64).reshape(n), k


def as_probs(probs, what: str = "source probabilities") -> torch.Tensor:
    """(n, Z) float64 rows of a probability simplex (negative entries or rows not summing to 1
    within 1e-3 raise SuiteError); rows are renormalised exactly."""
    p = as_features(probs, what)
    if bool((p < 0).any()):
        raise SuiteError(f"The {what} have negative entries.",
                         "Pass softmax probabilities of the source head, not logits.")
    s = p.sum(dim=1, keepdim=True)
    if bool(((s - 1.0).abs() > 1e-3).any()):
        raise SuiteError(f"The rows of the {what} do not sum to 1.",
                         "Pass softmax probabilities of the source head, not logits.")
    return p / s


def one_hot(y: torch.Tensor, k: int) -> torch.Tensor:
    """(n, K) float64 indicator matrix."""
    out = torch.zeros((y.shape[0], k), dtype=torch.float64, device=y.device)
    out[torch.arange(y.shape[0], device=y.device), y] = 1.0
    return out


def class_means(x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(means (K, d), counts (K,)) of rows ``x`` (n, d) per label."""
    counts = torch.bincount(y, minlength=k).to(x.dtype)
    sums = torch.zeros((k, x.shape[1]), dtype=x.dtype, device=x.device).index_add_(0, y, x)
    return sums / counts[:, None], counts


def gram(x: torch.Tensor) -> torch.Tensor:
    """``x^T x`` (d, d), symmetrised (the GEMM's two triangles can differ in the last bit)."""
    g = x.T @ x
    return 0.5 * (g + g.T)


def eigh_desc(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric matrix."""
    w, v = torch.linalg.eigh(a)
    return w.flip(0), v.flip(1)


def pinv_psd(a: torch.Tensor, rcond: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues' pseudo-inverses (d,), eigenvectors (d, d)) of a symmetric PSD matrix:
    eigenvalues at or below ``rcond * max |eigenvalue|`` count as zero (numpy.linalg.pinv's rule,
    with the absolute eigenvalue as the singular value)."""
    w, v = torch.linalg.eigh(a)
    cut = rcond * w.abs().max()
    inv = torch.where(w.abs() > cut, 1.0 / w, torch.zeros_like(w))
    return inv, v


def logdet_spd(a: torch.Tensor) -> torch.Tensor:
    """log det of a symmetric positive-definite matrix (Cholesky; eigenvalues on failure)."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return 2.0 * torch.log(torch.diagonal(chol)).sum()
    return torch.log(torch.linalg.eigvalsh(a).clamp_min(torch.finfo(a.dtype).tiny)).sum()


def pca(x: torch.Tensor, *, components: int | None = None, variance: float | None = None
        ) -> torch.Tensor:
    """Rows of ``x`` (n, d) centred and projected on their leading principal directions:
    ``components`` of them, or the fewest whose explained-variance ratio reaches ``variance``
    (scikit-learn's rule for a float ``n_components``: ``searchsorted(cumsum(ratio), variance,
    side="right") + 1``). Returns (n, p)."""
    xc = x - x.mean(0)
    n, d = xc.shape
    if n <= d:  # eigenvectors of the n x n Gram matrix: principal scores are U diag(s)
        w, u = eigh_desc(0.5 * (xc @ xc.T + (xc @ xc.T).T))
        w = w.clamp_min(0)
        scores = u * w.sqrt()
    else:
        w, v = eigh_desc(gram(xc))
        w = w.clamp_min(0)
        scores = None
    if components is not None:
        p = min(int(components), int(w.numel()))
    else:
        ratio = torch.cumsum(w / w.sum(), 0)
        p = int(torch.searchsorted(ratio, torch.tensor([variance], dtype=ratio.dtype,
                                                       device=ratio.device), right=True)) + 1
        p = min(p, int(w.numel()))
    if scores is not None:
        return scores[:, :p]
    return xc @ v[:, :p]
