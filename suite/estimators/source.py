"""Estimators from the source head's predictions: LEEP and NCE.

Both read the source classifier's output on the target examples, not the features: a model
without a source head (or a head whose output cannot be recovered from the cached features)
cannot be scored by them (:mod:`suite.estimators.registry` skips them with a note).
"""

from __future__ import annotations

import torch

from suite.errors import SuiteError
from suite.estimators._common import as_labels, as_probs


def leep(source_probs, labels) -> float:
    """LEEP, the log expected empirical prediction (higher is better, at most 0).

    Source: Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate
    Transferability of Learned Representations", ICML 2020, eq. (1)-(2).

    ``theta_i`` (Z,) = source-head softmax on target example i, ``y_i`` its target label::

        P(y, z) = 1/n sum_{i: y_i = y} theta_iz          (empirical joint, K x Z)
        P(y | z) = P(y, z) / sum_y' P(y', z)
        LEEP = 1/n sum_i log( sum_z P(y_i | z) theta_iz )

    Source classes that receive no probability mass (P(z) = 0) contribute nothing.
    """
    p = as_probs(source_probs)  # (n, Z)
    n = p.shape[0]
    y, k = as_labels(labels, n, p.device)
    joint = torch.zeros((k, p.shape[1]), dtype=p.dtype, device=p.device).index_add_(0, y, p) / n
    marginal = joint.sum(0)  # (Z,)
    cond = torch.where(marginal > 0, joint / marginal.clamp_min(torch.finfo(p.dtype).tiny),
                       torch.zeros_like(joint))  # P(y | z)  (K, Z)
    eep = (p * cond[y]).sum(1)  # (n,): sum_z P(y_i | z) theta_iz
    return float(torch.log(eep).mean())


def nce(source_labels, labels) -> float:
    """NCE, the negative conditional entropy -H(Y | Z) (higher is better, at most 0).

    Source: Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification
    Tasks", ICCV 2019, eq. (2)-(4).

    ``z_i`` = the source head's hard label (argmax) of target example i::

        P(y, z) = #{i: y_i = y, z_i = z} / n,   P(z) = sum_y P(y, z)
        NCE = -H(Y | Z) = sum_{y, z} P(y, z) log( P(y, z) / P(z) )

    ``source_labels`` may be (n,) hard labels or (n, Z) probabilities (their argmax is taken).
    """
    z = torch.as_tensor(source_labels)
    if z.ndim == 2:
        z = as_probs(z).argmax(1)
    if z.ndim != 1 or z.is_floating_point():
        raise SuiteError("NCE needs the source head's hard labels (n,) as integers, or its "
                         "probabilities (n, Z).", "Pass argmax of the source-head softmax.")
    n = z.shape[0]
    y, k = as_labels(labels, n, z.device)
    _, zi = torch.unique(z, return_inverse=True)
    nz = int(zi.max()) + 1
    joint = torch.zeros((k, nz), dtype=torch.float64, device=z.device)
    joint.index_put_((y, zi.reshape(n)), torch.ones(n, dtype=torch.float64, device=z.device),
                     accumulate=True)
    joint /= n
    marginal = joint.sum(0, keepdim=True)  # (1, Z)
    ratio = torch.where(joint > 0, joint / marginal, torch.ones_like(joint))
    return float((joint * torch.log(ratio)).sum())
