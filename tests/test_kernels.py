"""suite.kernels: compiled kernels (CPU always, CUDA when present) against plain-torch references.

Every comparison draws fresh random logits of shape (n, m, k): k = 1..3, k not a multiple of
any vector width, k = 1000, large magnitudes (+-80, where a naive softmax overflows and exp
underflows), m = 1 and m = 45 (the paper's grid).
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from suite import kernels as K
from suite.errors import SuiteError

# (n, m, k)
SHAPES = [(1, 1, 1), (7, 3, 1), (5, 45, 2), (13, 45, 3), (64, 1, 17), (100, 45, 37),
          (8, 3, 129), (33, 2, 1000)]
SCALES = [1.0, 80.0]

needs_compiled = pytest.mark.skipif(not K.compiled(), reason="suite._C is not compiled")
needs_cuda = pytest.mark.skipif(not K.has_cuda(), reason="no CUDA device or CUDA kernels")


def _logits(shape, scale, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    # uniform in [-scale, scale]: at 80 rows hold logits 160 apart
    z = (torch.rand(shape, generator=g) * 2 - 1) * scale
    return z.to(device)


def _labels(n, k, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, k, (n,), generator=g).to(device)


def _targets(n, k, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed + 2)
    return (torch.rand((n, k), generator=g) < 0.3).float().to(device)


def _assert_loss_close(got, want):
    assert got.dtype == torch.float64 and got.shape == want.shape
    # float32 rows summed in float64: relative error of a few float32 ulps per row
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-5, atol=1e-5)


def _assert_grad_close(got, want):
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-5, atol=1e-6)


def _assert_bias_close(got, want, n):
    assert got.dtype == torch.float32 and got.shape == want.shape
    # sums of n terms in [-1, 1], in a different order than torch's
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-5, atol=2e-6 * n)


def _check_softmax(shape, scale, seed, device):
    n, m, k = shape
    z = _logits(shape, scale, seed, device)
    y = _labels(n, k, seed, device)
    want_loss, want_g, want_b = K.reference_softmax_xent_grad(z, y)
    got = z.clone()
    loss, bias = K.softmax_xent_grad_(got, y)
    assert loss.device == z.device and bias.device == z.device and bias.shape == (m, k)
    _assert_grad_close(got, want_g)
    _assert_loss_close(loss, want_loss)
    _assert_bias_close(bias, want_b, n)
    assert torch.isfinite(got).all() and torch.isfinite(loss).all()


def _check_sigmoid(shape, scale, seed, device):
    n, m, k = shape
    z = _logits(shape, scale, seed, device)
    t = _targets(n, k, seed, device)
    want_loss, want_g, want_b = K.reference_sigmoid_bce_grad(z, t)
    got = z.clone()
    loss, bias = K.sigmoid_bce_grad_(got, t)
    _assert_grad_close(got, want_g)
    _assert_loss_close(loss, want_loss)
    _assert_bias_close(bias, want_b, n)


def _check_argmax(shape, scale, seed, device):
    z = _logits(shape, scale, seed, device)
    assert torch.equal(K.argmax(z).cpu(), K.reference_argmax(z).cpu())
    # ties (few distinct values) go to the first maximum, as in torch.argmax
    ties = torch.round(_logits(shape, 1.5, seed + 7, device))
    assert torch.equal(K.argmax(ties).cpu(), K.reference_argmax(ties).cpu())


# ----------------------------------------------------------------------------- CPU

# Each kernel against its reference: (check, seed offset), the same seeds on CPU and CUDA.
KERNEL_CHECKS = [pytest.param(_check_softmax, 0, id="softmax_xent_grad"),
                 pytest.param(_check_sigmoid, 1, id="sigmoid_bce_grad"),
                 pytest.param(_check_argmax, 2, id="argmax")]


@needs_compiled
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("check, salt", KERNEL_CHECKS)
def test_cpu_kernel_matches_reference(check, salt, shape, scale):
    check(shape, scale, seed=hash((shape, scale)) % 10_000 + salt, device="cpu")


@needs_compiled
def test_argmax_nan_counts_as_maximum():
    z = torch.tensor([[[1.0, float("nan"), 3.0, float("nan")], [2.0, 2.0, 1.0, 0.0]]])
    assert K.argmax(z).tolist() == torch.argmax(z, dim=2).tolist() == [[1, 0]]


@needs_compiled
def test_softmax_xent_grad_extreme_rows():
    # one dominant logit: p = onehot up to exp(-160); the label elsewhere costs 160 nats
    z = torch.full((2, 1, 5), -80.0)
    z[:, 0, 2] = 80.0
    y = torch.tensor([2, 0])
    loss, bias = K.softmax_xent_grad_(z, y)
    assert loss.item() == pytest.approx(160.0, rel=1e-6)
    want = torch.zeros(2, 1, 5)
    want[0, 0, 2] = 0.0
    want[1, 0, 2], want[1, 0, 0] = 1.0, -1.0
    torch.testing.assert_close(z, want, atol=1e-7, rtol=0)
    torch.testing.assert_close(bias, want.sum(0), atol=1e-7, rtol=0)


@needs_compiled
def test_cpu_kernels_deterministic_and_thread_count_independent():
    shape = (301, 45, 37)
    z = _logits(shape, 10.0, 5)
    y = _labels(301, 37, 5)
    old = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            g = z.clone()
            results.append((g, *K.softmax_xent_grad_(g, y)))
    finally:
        torch.set_num_threads(old)
    (g1, l1, b1), (g2, l2, b2), (g3, l3, b3) = results
    assert torch.equal(g1, g2)  # rows do not depend on the split
    assert torch.equal(l2, l3) and torch.equal(b2, b3)  # same threads: bitwise identical
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=0)
    torch.testing.assert_close(b1, b2, rtol=1e-5, atol=1e-5)


@needs_compiled
def test_empty_batch_gives_zeros():
    z = torch.empty((0, 4, 3))
    loss, bias = K.softmax_xent_grad_(z, torch.empty(0, dtype=torch.int64))
    assert loss.tolist() == [0.0] * 4 and bias.shape == (4, 3) and not bias.any()
    loss, bias = K.sigmoid_bce_grad_(z, torch.empty((0, 3)))
    assert loss.tolist() == [0.0] * 4 and not bias.any()
    assert K.argmax(z).shape == (0, 4)


@needs_compiled
def test_binding_refuses_silent_copies():
    # the kernels write in place: the binding must reject, not convert, a wrong array
    z = np.zeros((2, 1, 3), dtype=np.float64)
    y = np.zeros(2, dtype=np.int64)
    loss, bias = np.zeros(1), np.zeros((1, 3), dtype=np.float32)
    with pytest.raises(TypeError):
        K._C.softmax_xent_grad(z, y, loss, bias, 1)
    zt = np.zeros((3, 1, 2), dtype=np.float32).transpose(2, 1, 0)  # (2, 1, 3), not C-contiguous
    with pytest.raises(TypeError):
        K._C.softmax_xent_grad(zt, y, loss, bias, 1)


def test_fallback_without_compiled_module(monkeypatch):
    # the plain-torch path used when suite._C is missing keeps the in-place contract
    z = _logits((9, 4, 5), 3.0, 11)
    y = _labels(9, 5, 11)
    t = _targets(9, 5, 11)
    want = K.reference_softmax_xent_grad(z, y)
    want_bce = K.reference_sigmoid_bce_grad(z, t)
    monkeypatch.setattr(K, "_C", None)
    assert not K.compiled() and not K.has_cuda()
    g = z.clone()
    loss, bias = K.softmax_xent_grad_(g, y)
    assert torch.equal(g, want[1]) and torch.equal(loss, want[0]) and torch.equal(bias, want[2])
    g = z.clone()
    loss, bias = K.sigmoid_bce_grad_(g, t)
    assert torch.equal(g, want_bce[1]) and torch.equal(loss, want_bce[0])
    assert torch.equal(K.argmax(z), torch.argmax(z, dim=2))


def test_reference_matches_float64_math():
    # the reference itself against the formulas evaluated in float64
    z = _logits((6, 2, 4), 20.0, 3)
    y = _labels(6, 4, 3)
    loss, g, bias = K.reference_softmax_xent_grad(z, y)
    zd = z.double()
    lse = torch.logsumexp(zd, dim=2)  # (n, m)
    want_loss = (lse - zd.gather(2, y.view(-1, 1, 1).expand(-1, 2, 1)).squeeze(2)).sum(0)
    onehot = torch.nn.functional.one_hot(y, 4).double().unsqueeze(1)
    want_g = torch.softmax(zd, dim=2) - onehot
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.double(), want_g, rtol=0, atol=1e-6)
    torch.testing.assert_close(bias.double(), want_g.sum(0), rtol=0, atol=1e-5)
    t = _targets(6, 4, 3)
    loss, g, _ = K.reference_sigmoid_bce_grad(z, t)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        zd, t.double().unsqueeze(1).expand_as(zd), reduction="none").sum(dim=(0, 2))
    torch.testing.assert_close(loss, bce, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.double(), torch.sigmoid(zd) - t.double().unsqueeze(1),
                               rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("make, match", [
    (lambda: (torch.zeros(2, 1, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.int64)),
     "float32"),
    (lambda: (torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64)), "3-D"),
    (lambda: (torch.zeros(3, 1, 2).transpose(0, 2), torch.zeros(2, dtype=torch.int64)),
     "contiguous"),
    (lambda: (torch.zeros(2, 1, 0), torch.zeros(2, dtype=torch.int64)), "k >= 1"),
    (lambda: (torch.zeros(2, 1, 3), torch.zeros(2, dtype=torch.int32)), "int64"),
    (lambda: (torch.zeros(2, 1, 3), torch.zeros(3, dtype=torch.int64)), r"shape \(n,\)"),
    (lambda: (torch.zeros(2, 1, 3), torch.tensor([0, 3])), r"\[0, 3\)"),
    (lambda: (torch.zeros(2, 1, 3), torch.tensor([-1, 0])), r"\[0, 3\)"),
    (lambda: (torch.zeros(2, 1, 3, device="meta"), torch.zeros(2, dtype=torch.int64)),
     "cpu or cuda"),
    (lambda: (np.zeros((2, 1, 3), np.float32), torch.zeros(2, dtype=torch.int64)),
     "torch.Tensor"),
])
def test_softmax_input_errors(make, match):
    z, y = make()
    with pytest.raises(ValueError, match=match):
        K.softmax_xent_grad_(z, y)
    with pytest.raises(ValueError, match=match):
        K.reference_softmax_xent_grad(z, y)


@needs_compiled
def test_unchecked_labels_still_rejected_on_cpu():
    z = torch.zeros(2, 1, 3)
    with pytest.raises(ValueError, match="labels out of"):
        K.softmax_xent_grad_(z, torch.tensor([0, 3]), check_labels=False)
    y = torch.tensor([2, 0])
    want = K.reference_softmax_xent_grad(z, y)
    loss, _ = K.softmax_xent_grad_(z, y, check_labels=False)
    torch.testing.assert_close(loss, want[0])


@pytest.mark.parametrize("targets, match", [
    (torch.zeros(2, 3, dtype=torch.float64), "float32"),
    (torch.zeros(2, 4), r"shape \(n, k\)"),
    (torch.zeros(3, 2).t(), "contiguous"),
])
def test_sigmoid_input_errors(targets, match):
    with pytest.raises(ValueError, match=match):
        K.sigmoid_bce_grad_(torch.zeros(2, 1, 3), targets)


def test_argmax_input_errors():
    with pytest.raises(ValueError, match="float32"):
        K.argmax(torch.zeros(2, 1, 3, dtype=torch.float16))
    with pytest.raises(ValueError, match="3-D"):
        K.argmax(torch.zeros(2, 3))


# ----------------------------------------------------------------------------- CUDA availability

@pytest.mark.skipif(K.has_cuda(), reason="this machine can run the CUDA kernels")
def test_require_cuda_explains_what_is_missing():
    with pytest.raises(SuiteError) as info:
        K.require_cuda()
    err = info.value
    assert "CUDA" in err.problem and err.fix
    assert not K.has_cuda()


def test_require_cuda_messages(monkeypatch):
    monkeypatch.setattr(K, "_C", types.SimpleNamespace(cuda_available=False))
    with pytest.raises(SuiteError, match="not compiled with CUDA") as info:
        K.require_cuda()
    assert "nvcc" in info.value.fix and "pip install" in info.value.fix
    assert K.compiled() and not K.cuda_compiled() and not K.has_cuda()

    monkeypatch.setattr(K, "_C", None)
    with pytest.raises(SuiteError, match="not compiled with CUDA"):
        K.require_cuda()

    monkeypatch.setattr(K, "_C", types.SimpleNamespace(cuda_available=True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SuiteError, match="no CUDA device"):
        K.require_cuda()
    assert K.cuda_compiled() and not K.has_cuda()


# ----------------------------------------------------------------------------- CUDA

@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", SHAPES + [(5000, 45, 100)])
@pytest.mark.parametrize("check, salt", KERNEL_CHECKS)
def test_cuda_kernel_matches_reference(check, salt, shape, scale):
    check(shape, scale, seed=hash((shape, scale)) % 10_000 + salt, device="cuda")


@pytest.mark.gpu
@needs_cuda
def test_cuda_kernels_run_on_the_current_stream():
    z = _logits((257, 45, 100), 5.0, 9, "cuda")
    y = _labels(257, 100, 9, "cuda")
    want_loss, want_g, want_b = K.reference_softmax_xent_grad(z, y)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        g = z.clone()
        loss, bias = K.softmax_xent_grad_(g, y)
        am = K.argmax(z)
    torch.cuda.current_stream().wait_stream(stream)
    _assert_grad_close(g, want_g)
    _assert_loss_close(loss, want_loss)
    _assert_bias_close(bias, want_b, 257)
    assert torch.equal(am, torch.argmax(z, dim=2))


@pytest.mark.gpu
@needs_cuda
def test_cuda_argmax_nan_and_empty():
    z = torch.tensor([[[1.0, float("nan"), 3.0, float("nan")], [2.0, 2.0, 1.0, 0.0]]],
                     device="cuda")
    assert K.argmax(z).tolist() == [[1, 0]]
    e = torch.empty((0, 4, 3), device="cuda")
    loss, bias = K.softmax_xent_grad_(e, torch.empty(0, dtype=torch.int64, device="cuda"))
    assert loss.tolist() == [0.0] * 4 and not bias.any()


@pytest.mark.gpu
@needs_cuda
def test_cuda_device_mismatch_is_an_error():
    z = torch.zeros(2, 1, 3, device="cuda")
    with pytest.raises(ValueError, match="labels is on cpu"):
        K.softmax_xent_grad_(z, torch.zeros(2, dtype=torch.int64))
