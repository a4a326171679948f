"""Fused loss/gradient kernels of the fixed-feature probe (public API of ``suite._C``).

The probe fits multinomial (or one-vs-rest) L2 logistic regression for all ``m`` regularisation
values at once. Their logits come from ONE product ``X @ [W_1 .. W_m]`` of shape ``(n, m*k)``,
viewed here as ``(n, m, k)``: row ``(i, j)`` holds the ``k`` class scores of example ``i`` under
value ``j``. What remains of a function+gradient evaluation besides the two GEMMs is, per row, a
softmax, the loss, ``P - Y`` and the column sums of ``P - Y`` (the bias gradient). The kernels do
that in one pass over the logits block (on CUDA, plus one more read of it for the bias sums),
overwriting it with ``P - Y`` so that the second GEMM (``X.T @ G``) reads it directly, with no
extra ``(n, m, k)`` temporaries.

Every kernel has a plain-PyTorch reference (``reference_*``; not in place) used by the tests and
as the fallback when the compiled module is missing. Compiled paths:

* CPU tensors: C++/OpenMP (``csrc/cpu``), zero-copy through ``tensor.numpy()``, threads =
  ``torch.get_num_threads()``, the GIL released while it runs; deterministic for a given thread
  count.
* CUDA tensors: CUDA kernels (``csrc/cuda``) launched on ``torch.cuda.current_stream()``; the
  loss and bias-gradient sums use atomics, so their last bits may vary between runs.

Inputs are checked here (dtype, shape, contiguity, device, label range) and a
:class:`ValueError` names the problem; the C++ layer does no checking beyond memory safety.
"""

from __future__ import annotations

import torch

from suite.errors import SuiteError

try:  # the compiled kernel layer; absent only in a source tree that was never built
    from suite import _C  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - the package build always compiles it
    _C = None

__all__ = [
    "softmax_xent_grad_", "sigmoid_bce_grad_", "argmax",
    "reference_softmax_xent_grad", "reference_sigmoid_bce_grad", "reference_argmax",
    "compiled", "cuda_compiled", "has_cuda", "require_cuda",
]


# ----------------------------------------------------------------------------- availability

def compiled() -> bool:
    """True when the compiled module ``suite._C`` was imported (CPU kernels available)."""
    return _C is not None


def cuda_compiled() -> bool:
    """True when ``suite._C`` was built with its CUDA kernels (nvcc found at build time)."""
    return _C is not None and bool(_C.cuda_available)


def has_cuda() -> bool:
    """True when the CUDA kernels were compiled AND a CUDA device is present."""
    return cuda_compiled() and torch.cuda.is_available()


def require_cuda() -> None:
    """Raise :class:`SuiteError` unless the CUDA kernels can run here (see :func:`has_cuda`)."""
    if _C is None:
        raise SuiteError(
            "suite was not compiled with CUDA: its compiled kernels (suite._C) are missing "
            "altogether, so this is a source tree that was never built.",
            "Install the package (`pip install -e .` in the repository) on a machine with the "
            "CUDA toolkit's nvcc on PATH so that the CPU and CUDA kernels are compiled.")
    if not _C.cuda_available:
        raise SuiteError(
            "suite was not compiled with CUDA: nvcc was not found when suite._C was built, so "
            "only the CPU kernels exist.",
            "Reinstall on a CUDA machine with nvcc on PATH (or CUDACXX=/path/to/nvcc): "
            "`pip install -e .` (add CMAKE_ARGS=-DSUITE_CUDA=ON to make a missing nvcc an "
            "error), or use the CPU backend (device cpu).")
    if not torch.cuda.is_available():
        raise SuiteError(
            "suite was compiled with CUDA but no CUDA device is available here "
            "(torch.cuda.is_available() is False).",
            "Run on a machine with an NVIDIA GPU and driver, or use the CPU backend "
            "(device cpu).")


# ----------------------------------------------------------------------------- checks

def _check_logits(logits: torch.Tensor, name: str = "logits") -> tuple[int, int, int]:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {logits.dtype}")
    if logits.dim() != 3:
        raise ValueError(f"{name} must be 3-D (n, m, k), got shape {tuple(logits.shape)}")
    if not logits.is_contiguous():
        raise ValueError(f"{name} must be contiguous (the kernels write it in place); "
                         "call .contiguous() first")
    if logits.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a cpu or cuda device, got {logits.device}")
    n, m, k = logits.shape
    if k < 1:
        raise ValueError(f"{name} needs at least one class (k >= 1), got shape {(n, m, k)}")
    return n, m, k


def _check_device(t: torch.Tensor, logits: torch.Tensor, name: str) -> None:
    if t.device != logits.device:
        raise ValueError(f"{name} is on {t.device} but logits are on {logits.device}")


def _check_labels(labels: torch.Tensor, n: int, k: int, logits: torch.Tensor,
                  check_range: bool = True) -> None:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape (n,) = ({n},), got {tuple(labels.shape)}")
    _check_device(labels, logits, "labels")
    if not labels.is_contiguous():
        raise ValueError("labels must be contiguous")
    if n and check_range:
        # one reduction, one host sync (on CUDA); callers that evaluate the same labels many
        # times check them once and pass check_labels=False afterwards
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= k:
            raise ValueError(f"labels must lie in [0, {k}) (k = logits.shape[2]); "
                             f"got values in [{lo}, {hi}]")


def _check_targets(targets: torch.Tensor, n: int, k: int, logits: torch.Tensor) -> None:
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype != torch.float32:
        raise ValueError(f"targets must be float32 (0/1 per class), got {targets.dtype}")
    if targets.shape != (n, k):
        raise ValueError(f"targets must have shape (n, k) = ({n}, {k}), "
                         f"got {tuple(targets.shape)}")
    _check_device(targets, logits, "targets")
    if not targets.is_contiguous():
        raise ValueError("targets must be contiguous")


def _np(t: torch.Tensor):
    """Zero-copy numpy view of a CPU tensor (shares memory; writes go through)."""
    return t.detach().numpy()


def _outputs(logits: torch.Tensor, m: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised loss (m,) float64 and grad_bias (m, k) float32: the kernels overwrite
    them (the CUDA launcher zeroes them on its stream before accumulating)."""
    return (torch.empty(m, dtype=torch.float64, device=logits.device),
            torch.empty((m, k), dtype=torch.float32, device=logits.device))


def _zero_outputs(logits: torch.Tensor, m: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.zeros(m, dtype=torch.float64, device=logits.device),
            torch.zeros((m, k), dtype=torch.float32, device=logits.device))


def _cuda_args(logits: torch.Tensor) -> tuple[int, int]:
    """(device index, raw cudaStream_t of torch's current stream on that device)."""
    require_cuda()
    dev = logits.device
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(index).cuda_stream


# ----------------------------------------------------------------------------- kernels

def _fused_loss_(logits: torch.Tensor, y: torch.Tensor, reference, kernel: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared dispatch of the in-place loss kernels (inputs already checked): the reference when
    ``suite._C`` is missing, else ``_C.<kernel>`` on CPU or ``_C.<kernel>_cuda`` on a GPU.
    ``y`` is the labels (n,) or the targets (n, k)."""
    n, m, k = logits.shape
    if n == 0 or m == 0:
        return _zero_outputs(logits, m, k)
    if _C is None:
        ref_loss, g, ref_bias = reference(logits, y)
        logits.copy_(g)
        return ref_loss, ref_bias
    loss, grad_bias = _outputs(logits, m, k)
    if logits.is_cuda:
        device, stream = _cuda_args(logits)
        getattr(_C, kernel + "_cuda")(logits.data_ptr(), y.data_ptr(), loss.data_ptr(),
                                      grad_bias.data_ptr(), n, m, k, device, stream)
    else:
        getattr(_C, kernel)(_np(logits), _np(y), _np(loss), _np(grad_bias),
                            torch.get_num_threads())
    return loss, grad_bias


def softmax_xent_grad_(logits: torch.Tensor, labels: torch.Tensor, *,
                       check_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial cross-entropy of every row, overwriting the logits with ``P - Y``.

    For logits ``Z`` (n, m, k) float32 and labels ``y`` (n,) int64 in ``[0, k)``, with
    ``P[i, j, :] = softmax(Z[i, j, :])`` (computed as ``exp(Z - max) / sum exp(Z - max)``) and
    ``Y[i, :] = onehot(y_i)``::

        Z[i, j, :] <- P[i, j, :] - Y[i, :]                       (in place)
        loss[j]     = sum_i  logsumexp(Z[i, j, :]) - Z[i, j, y_i]  (m,) float64
        grad_bias[j] = sum_i (P - Y)[i, j, :]                     (m, k) float32

    ``loss[j]`` is the unnormalised negative log-likelihood under value ``j``; ``Z`` afterwards
    is the gradient of ``loss`` with respect to the logits, so ``X.T @ Z.view(n, m*k)`` is the
    weight gradient of all values in one GEMM. Outputs live on the logits' device.

    ``check_labels=False`` skips the label range check (a reduction and, on CUDA, a host sync)
    for labels already checked; dtype, shape and device are always checked. An out-of-range
    label is still never an out-of-bounds access: the CPU binding rejects it (its O(n) scan is
    free next to the O(n m k) work) and the CUDA kernel gives that value a NaN loss.
    """
    n, m, k = _check_logits(logits)
    _check_labels(labels, n, k, logits, check_range=check_labels)
    return _fused_loss_(logits, labels, _reference_softmax, "softmax_xent_grad")


def sigmoid_bce_grad_(logits: torch.Tensor,
                      targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-rest binary cross-entropy of every entry, overwriting the logits with ``S - T``.

    For logits ``Z`` (n, m, k) float32 and multi-label targets ``T`` (n, k) float32 in {0, 1},
    with ``S = sigmoid(Z)``::

        Z[i, j, c] <- S[i, j, c] - T[i, c]                                   (in place)
        loss[j]     = sum_{i,c} softplus(Z[i,j,c]) - T[i,c] * Z[i,j,c]          (m,) float64
        grad_bias[j] = sum_i (S - T)[i, j, :]                                 (m, k) float32

    with the stable ``softplus(z) = max(z, 0) + log1p(exp(-|z|))`` and
    ``sigmoid(z) = 1 / (1 + exp(-z))`` evaluated on the side that does not overflow.
    (Soft targets in [0, 1] work too: the formulas hold unchanged.)
    """
    n, m, k = _check_logits(logits)
    _check_targets(targets, n, k, logits)
    return _fused_loss_(logits, targets, _reference_sigmoid, "sigmoid_bce_grad")


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """Predicted class of every example under every value: ``argmax_c Z[i, j, c]``.

    ``logits`` (n, m, k) float32 -> (n, m) int64 (on the logits' device). Ties go to the
    lowest index and a NaN counts as the maximum, as in :func:`torch.argmax`. Used to score the
    validation accuracy of all ``m`` values from one validation GEMM.
    """
    n, m, k = _check_logits(logits)
    out = torch.empty((n, m), dtype=torch.int64, device=logits.device)
    if n == 0 or m == 0:
        return out
    if _C is None:
        return reference_argmax(logits)
    if logits.is_cuda:
        device, stream = _cuda_args(logits)
        _C.argmax_cuda(logits.data_ptr(), out.data_ptr(), n, m, k, device, stream)
    else:
        _C.argmax(_np(logits), _np(out), torch.get_num_threads())
    return out


# ----------------------------------------------------------------------------- references

def _reference_softmax(logits, labels):
    # log P via log_softmax (max-subtracted inside torch); (n, m, k)
    logp = torch.log_softmax(logits, dim=2)
    y = labels.view(-1, 1, 1).expand(-1, logits.shape[1], 1)  # (n, m, 1)
    loss = -logp.gather(2, y).squeeze(2).double().sum(0)  # (m,)
    g = logp.exp()
    g.scatter_add_(2, y, torch.full_like(y, -1.0, dtype=g.dtype))  # P - Y
    return loss, g, g.sum(0)


def _reference_sigmoid(logits, targets):
    t = targets.unsqueeze(1)  # (n, 1, k), broadcast over the m values
    # softplus(z) - t z, with softplus(z) = max(z, 0) + log1p(exp(-|z|))
    elem = logits.clamp_min(0) + torch.log1p(torch.exp(-logits.abs())) - t * logits
    loss = elem.double().sum(dim=(0, 2))  # (m,)
    g = torch.sigmoid(logits) - t
    return loss, g, g.sum(0)


def reference_softmax_xent_grad(logits: torch.Tensor, labels: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain-PyTorch :func:`softmax_xent_grad_`, NOT in place.

    Returns ``(loss (m,) float64, P - Y (n, m, k) float32, grad_bias (m, k) float32)``.
    """
    n, _, k = _check_logits(logits)
    _check_labels(labels, n, k, logits)
    return _reference_softmax(logits, labels)


def reference_sigmoid_bce_grad(logits: torch.Tensor, targets: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain-PyTorch :func:`sigmoid_bce_grad_`, NOT in place.

    Returns ``(loss (m,) float64, sigmoid(Z) - T (n, m, k) float32, grad_bias (m, k) float32)``.
    """
    n, _, k = _check_logits(logits)
    _check_targets(targets, n, k, logits)
    return _reference_sigmoid(logits, targets)


def reference_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch :func:`argmax`: ``torch.argmax(logits, dim=2)`` -> (n, m) int64."""
    _check_logits(logits)
    return torch.argmax(logits, dim=2)
