"""The probe solver against references: the objective's optimum (scipy / scikit-learn), the
exhaustive sweep, the reference backend and the scikit-learn protocol; input validation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from suite import kernels as K
from suite.config import PAPER_L2_GRID
from suite.errors import SuiteError
from suite.probe import _engine as E
from suite.probe import solver as S
from suite.probe.data import load_features_npz, make_features

GRID = PAPER_L2_GRID
WINDOW = GRID[28:39]  # 10 .. 1e3.5: brackets the fixture's optimum; keeps scikit-learn quick


# Tiny problems: a second thread only adds synchronisation (and on a busy machine, much).
pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def feats():
    # Small but of realistic difficulty: the selected value lies inside the grid.
    return make_features(600, 300, 600, 64, 8, seed=1, latent=12, separation=0.7)


@pytest.fixture(scope="module")
def tiny():
    # For comparisons with tightly converged scipy / scikit-learn references.
    return make_features(300, 100, 100, 24, 5, seed=2, latent=8, separation=0.7)


def _objective_np(w_flat, x, y, l2, k):
    """sum_i CE + l2/2 ||W||^2 and its gradient, float64 (the definition, written out)."""
    d = x.shape[1]
    w, b = w_flat[: d * k].reshape(d, k), w_flat[d * k:]
    z = x @ w + b
    z = z - z.max(1, keepdims=True)
    lse = np.log(np.exp(z).sum(1))
    f = float((lse - z[np.arange(len(y)), y]).sum() + 0.5 * l2 * (w * w).sum())
    p = np.exp(z - lse[:, None])
    p[np.arange(len(y)), y] -= 1
    return f, np.concatenate([(x.T @ p + l2 * w).ravel(), p.sum(0)])


def _fit_engine(x, y, k, l2, kernels=E.FUSED, multilabel=False):
    xt = torch.as_tensor(x, dtype=torch.float32)
    basis = E.make_basis(xt)
    z = E.rotate(xt, basis)
    yt = torch.as_tensor(y, dtype=torch.float32 if multilabel else torch.int64)
    p = E.make_problem(z, yt, k, multilabel, kernels, s=basis.s)
    l2t = torch.tensor([l2], dtype=torch.float32)
    st = E.solve(p, l2t, E.zeros_state(p.d, 1, k, z), S.REFIT_OPTS)
    u, c = st.theta[:-1, 0], st.theta[-1, 0]
    w = basis.v @ u
    return w.double().numpy(), (c - basis.mu @ w).double().numpy(), p, st


@pytest.mark.parametrize("l2", [1.0, 1e3])
@pytest.mark.parametrize("kernels", [E.FUSED, E.REFERENCE], ids=["fused", "reference"])
def test_objective_matches_scipy_optimum(tiny, l2, kernels):
    x, y = tiny.x_train.astype(np.float64), tiny.y_train
    k = 5
    w, b, p, st = _fit_engine(tiny.x_train, y, k, l2, kernels)
    res = scipy.optimize.minimize(_objective_np, np.zeros(x.shape[1] * k + k), jac=True,
                                  args=(x, y, l2, k), method="L-BFGS-B",
                                  options={"maxiter": 5000, "gtol": 1e-9, "ftol": 1e-15})
    ours, _ = _objective_np(np.concatenate([w.ravel(), b]), x, y, l2, k)
    assert ours <= res.fun * (1 + 1e-5) + 1e-4
    # the engine's own objective (rotated basis, float32) agrees with the definition
    f = float(E.objective(p, st.theta, torch.tensor([l2]))[0])
    assert f == pytest.approx(ours, rel=1e-4)


@pytest.mark.parametrize("multilabel", [False, True], ids=["softmax", "sigmoid"])
def test_class_curvature_is_sum_of_p_one_minus_p(multilabel):
    """The preconditioner's h_c = sum_i p_ic (1 - p_ic), recovered from G = P - Y."""
    g = torch.Generator().manual_seed(0)
    n, m, k = 50, 3, 6
    logits = torch.randn(n, m, k, generator=g) * 3
    if multilabel:
        y = (torch.rand(n, k, generator=g) < 0.4).float()
        p = torch.sigmoid(logits)
    else:
        y = torch.randint(0, k, (n,), generator=g)
        p = torch.softmax(logits, -1)
    prob = E.make_problem(torch.zeros(n, 2), y, k, multilabel, E.FUSED, s=torch.ones(2))
    work = logits.clone()
    kern = E.FUSED.sigmoid_bce_grad_ if multilabel else E.FUSED.softmax_xent_grad_
    _, gbias = kern(work, y)  # work <- P - Y
    h = E._class_curvature(prob, work, gbias)
    torch.testing.assert_close(h, (p * (1 - p)).sum(0), rtol=1e-4, atol=1e-4)


def test_bias_is_unregularised(feats):
    """Shifting every feature by a constant must not change the fit's predictions: the bias
    (free) absorbs it. With a penalised bias the shifted problem would differ."""
    l2 = 10.0
    w1, b1, _, _ = _fit_engine(feats.x_train, feats.y_train, 8, l2)
    x2 = feats.x_train + 5.0
    w2, b2, _, _ = _fit_engine(x2, feats.y_train, 8, l2)
    np.testing.assert_allclose(w1, w2, atol=2e-3)
    np.testing.assert_allclose(b1, b2 + 5.0 * w2.sum(0), atol=2e-2)
    # and the optimum's bias gradient is zero: mean of P equals the class frequencies
    z = feats.x_train @ w1 + b1
    pr = np.exp(z - z.max(1, keepdims=True))
    pr /= pr.sum(1, keepdims=True)
    freq = np.bincount(feats.y_train, minlength=8)
    np.testing.assert_allclose(pr.sum(0), freq, atol=0.05)


def test_matches_sklearn_at_fixed_l2(tiny):
    from sklearn.linear_model import LogisticRegression

    l2 = 10.0
    w, b, _, _ = _fit_engine(tiny.x_train, tiny.y_train, 5, l2)
    sk = LogisticRegression(C=1 / l2, max_iter=2000, tol=1e-8).fit(
        tiny.x_train.astype(np.float64), tiny.y_train)
    # both are centred up to a per-row constant: compare softmax-invariant forms
    cw = sk.coef_.T - sk.coef_.T.mean(1, keepdims=True)
    np.testing.assert_allclose(w - w.mean(1, keepdims=True), cw, atol=1e-2)
    x = tiny.x_train.astype(np.float64)
    ours, _ = _objective_np(np.concatenate([w.ravel(), b]), x, tiny.y_train, l2, 5)
    theirs, _ = _objective_np(np.concatenate([sk.coef_.T.ravel(), sk.intercept_]), x,
                              tiny.y_train, l2, 5)
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_multilabel_objective_matches_sklearn(tiny):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    t = (rng.random((len(tiny.y_train), 3)) < 0.3).astype(np.float32)
    t[:, 0] = tiny.y_train < 2  # one learnable column
    l2 = 5.0
    w, b, _, _ = _fit_engine(tiny.x_train, t, 3, l2, multilabel=True)
    for c in range(3):
        sk = LogisticRegression(C=1 / l2, max_iter=2000, tol=1e-8).fit(
            tiny.x_train.astype(np.float64), t[:, c])
        np.testing.assert_allclose(w[:, c], sk.coef_[0], atol=1e-2)
        assert b[c] == pytest.approx(sk.intercept_[0], abs=5e-2)


def test_adaptive_search_matches_exhaustive_here(feats):
    """On these synthetic features the approximation happens to agree; on real ones it need not
    (tests/test_probe_selection.py), which is why exhaustive is the default."""
    a = S.fit_protocol(*feats.as_tuple(), backend="cpu", search="adaptive")
    e = S.fit_protocol(*feats.as_tuple(), backend="cpu")
    assert a.selected_l2 == e.selected_l2
    assert len(e.sweep) == len(GRID) and len(a.sweep) < len(GRID)
    assert GRID[0] < a.selected_l2 < GRID[-1]  # fixture difficulty: an interior optimum
    assert 30 < a.test_accuracy < 95
    assert a.test_accuracy == pytest.approx(e.test_accuracy, abs=1.0)


def test_cpu_reference_sklearn_agree(feats):
    cpu = S.fit_protocol(*feats.as_tuple(), backend="cpu")
    ref = S.fit_protocol(*feats.as_tuple(), backend="reference")
    sk = S.fit_protocol(*feats.as_tuple(), backend="sklearn", l2_grid=WINDOW)
    assert cpu.selected_l2 == ref.selected_l2
    assert cpu.test_accuracy == pytest.approx(ref.test_accuracy, abs=0.5)
    idx = GRID.index
    assert abs(idx(cpu.selected_l2) - idx(sk.selected_l2)) <= 1
    assert cpu.test_accuracy == pytest.approx(sk.test_accuracy, abs=1.5)
    assert cpu.weight.shape == (64, 8) and cpu.bias.shape == (8,)
    assert cpu.backend == "cpu" and sk.backend == "sklearn" and cpu.seconds > 0
    # validation accuracies of the values both fitted agree closely
    skd = dict(sk.sweep)
    close = [abs(a - skd[v]) for v, a in cpu.sweep if v in skd]
    assert close and np.median(close) <= 1.0


def test_binary_problem_all_backends():
    """Two classes: scikit-learn fits one binomial column; the protocol still returns two
    softmax columns with the same predictions, and its l2 lies one grid step from ours
    (the binomial penalty is twice the two-column softmax's, see suite.probe.backends)."""
    f = make_features(400, 150, 150, 16, 2, seed=3, latent=4, separation=0.4)
    cpu = S.fit_protocol(*f.as_tuple(), backend="cpu")
    sk = S.fit_protocol(*f.as_tuple(), backend="sklearn")
    assert sk.weight.shape == cpu.weight.shape == (16, 2) and sk.bias.shape == (2,)
    assert abs(GRID.index(cpu.selected_l2) - GRID.index(sk.selected_l2)) <= 2
    assert cpu.test_accuracy == pytest.approx(sk.test_accuracy, abs=2.0)
    x = np.asarray(f.x_test, dtype=np.float64)
    pred = (x @ sk.weight + sk.bias).argmax(1)
    assert 100 * np.mean(pred == f.y_test) == pytest.approx(sk.test_accuracy)


def test_polish_that_lowers_the_top_moves_the_selection(monkeypatch):
    """The adaptive search: when converging the top values lowers their validation scores
    below another value's, that value becomes the top and is polished too (its L-BFGS memory
    was already dropped, so it restarts from its stored weights). Validation scores are
    scripted."""
    f = make_features(40, 4, 8, 6, 2, seed=0, latent=3)
    real = S.metrics.score
    script = [10, 50, 40, 60, 55, 30,  # sweep: the peak at position 3, stop after two drops
              35, 45, 45,  # polishing positions 2, 3, 4 lowers them below position 1's 50
              10, 48]  # polishing positions 0, 1: position 1 (48) is now the top
    calls = []

    def scripted(metric, scores, y):
        calls.append(len(calls))
        return float(script[len(calls) - 1]) if len(calls) <= len(script) else \
            real(metric, scores, y)

    monkeypatch.setattr(S.metrics, "score", scripted)
    fit = S.fit_protocol(*f.as_tuple(), backend="cpu", search="adaptive")
    assert len(calls) == len(script) + 1  # + the test score
    assert fit.selected_l2 == GRID[::-1][1] and fit.val_accuracy == 48.0
    assert dict(fit.sweep)[GRID[::-1][3]] == 45.0


def test_mean_per_class_metric(feats):
    fit = S.fit_protocol(*feats.as_tuple(), backend="cpu", metric="mean_per_class")
    scores = feats.x_test @ fit.weight + fit.bias
    from suite.metrics import mean_per_class

    assert fit.test_accuracy == pytest.approx(mean_per_class(scores, feats.y_test))


def test_map11_multilabel_path():
    f = make_features(400, 200, 200, 32, 4, seed=3, latent=8, separation=0.8)
    rng = np.random.default_rng(1)

    def ml(y):  # class c plus a random second label: (n, 4) 0/1
        t = np.eye(4, dtype=np.float32)[y]
        t[np.arange(len(y)), rng.integers(0, 4, len(y))] = 1
        return t

    data = (f.x_train, ml(f.y_train), f.x_val, ml(f.y_val), f.x_test, ml(f.y_test))
    ours = S.fit_protocol(*data, backend="cpu", metric="map11")
    ref = S.fit_protocol(*data, backend="reference", metric="map11")
    assert ours.weight.shape == (32, 4)
    assert 40 < ours.test_accuracy <= 100
    assert ours.test_accuracy == pytest.approx(ref.test_accuracy, abs=1.0)


def test_ties_prefer_stronger_regularisation():
    assert S.select([(1.0, 50.0), (10.0, 50.0), (0.1, 49.0)]) == (10.0, 50.0)


def test_engine_batches_values_like_single_ones(feats):
    """m values in one GEMM give the same solutions as one at a time (the cuda layout)."""
    xt = torch.as_tensor(feats.x_train)
    basis = E.make_basis(xt)
    z = E.rotate(xt, basis)
    p = E.make_problem(z, torch.as_tensor(feats.y_train), 8, False, E.FUSED, s=basis.s)
    l2 = torch.tensor([300.0, 10.0, 1.0])
    both = E.solve(p, l2, E.zeros_state(p.d, 3, 8, z), S.REFIT_OPTS)
    for j in range(3):
        one = E.solve(p, l2[j:j + 1], E.zeros_state(p.d, 1, 8, z), S.REFIT_OPTS)
        fa = E.objective(p, both.theta[:, j:j + 1], l2[j:j + 1])
        fb = E.objective(p, one.theta, l2[j:j + 1])
        assert float(fa) == pytest.approx(float(fb), rel=1e-5, abs=1e-3)


def test_batched_path_selects_like_single_values(feats):
    """The cuda layout (several grid values per GEMM), run on the CPU."""
    data = feats.as_tuple()
    kw = dict(l2_grid=list(GRID), metric="top1", k=8, device=torch.device("cpu"),
              kernels=E.FUSED)
    one = S.engine_protocol(*data, batch=1, **kw)
    four = S.engine_protocol(*data, batch=4, **kw)
    assert abs(GRID.index(one.selected_l2) - GRID.index(four.selected_l2)) <= 1
    assert four.test_accuracy == pytest.approx(one.test_accuracy, abs=1.0)


@pytest.mark.gpu
def test_cuda_matches_cpu(feats):
    if not K.has_cuda():
        pytest.skip("needs the CUDA kernels and a GPU")
    cpu = S.fit_protocol(*feats.as_tuple(), backend="cpu")
    gpu = S.fit_protocol(*feats.as_tuple(), backend="cuda")
    assert abs(GRID.index(cpu.selected_l2) - GRID.index(gpu.selected_l2)) <= 1
    assert gpu.test_accuracy == pytest.approx(cpu.test_accuracy, abs=1.0)


def test_cuml_matches_reference(feats):
    pytest.importorskip("cuml")
    ref = S.fit_protocol(*feats.as_tuple(), backend="reference", l2_grid=WINDOW)
    cu = S.fit_protocol(*feats.as_tuple(), backend="cuml", l2_grid=WINDOW)
    assert abs(GRID.index(ref.selected_l2) - GRID.index(cu.selected_l2)) <= 1
    assert cu.test_accuracy == pytest.approx(ref.test_accuracy, abs=1.5)


def test_cuml_missing_is_a_clear_error(feats):
    try:
        import cuml  # noqa: F401
        pytest.skip("cuML is installed")
    except ImportError:
        pass
    with pytest.raises(SuiteError, match="suite\\[cuml\\]"):
        S.fit_protocol(*feats.as_tuple(), backend="cuml")


def test_cuda_backend_without_gpu_is_a_clear_error(feats):
    if K.has_cuda():
        pytest.skip("a GPU is present")
    with pytest.raises(SuiteError, match="CUDA|cuda"):
        S.fit_protocol(*feats.as_tuple(), backend="cuda")


# ------------------------------------------------------------------------- validation

def _ok():
    f = make_features(40, 20, 20, 6, 3, seed=0)
    return list(f.as_tuple())


@pytest.mark.parametrize("case,match", [
    ("nan", r"val features contain 3 non-finite value\(s\) \(2 NaN, 1 inf\)"),
    ("empty_class", "class\\(es\\) have no training examples: 2"),
    ("single", "single class"),
    ("length", "40 feature rows but 39 labels"),
    ("range", "outside the class range"),
    ("negative", "outside the class range"),
    ("dims", "different feature dimensions"),
    ("float_labels", "not integers"),
])
def test_bad_inputs_raise_before_fitting(case, match, monkeypatch):
    a = _ok()
    if case == "nan":
        a[2] = a[2].copy()
        a[2][0, 0] = np.nan
        a[2][1, 1] = np.nan
        a[2][2, 2] = np.inf
    elif case == "empty_class":
        a[1] = np.where(a[1] == 2, 0, a[1])
        a[3] = np.where(a[3] == 2, 0, a[3])
        a[5] = a[5].copy()
        a[5][0] = 2
    elif case == "single":
        a[1] = np.zeros_like(a[1])
        a[3] = np.zeros_like(a[3])
        a[5] = np.zeros_like(a[5])
    elif case == "length":
        a[1] = a[1][:-1]
    elif case == "range":
        a[5] = a[5].copy()
        a[5][0] = 7
        a[1] = a[1]  # train lacks 3..7 -> reported as range via num_classes below
    elif case == "negative":
        a[3] = a[3].copy()
        a[3][0] = -1
    elif case == "dims":
        a[4] = a[4][:, :5]
    elif case == "float_labels":
        a[1] = a[1].astype(np.float32) + 0.5
    calls = []
    monkeypatch.setattr(S, "engine_protocol", lambda *x, **k: calls.append(1))
    kw = {"num_classes": 3} if case == "range" else {}
    with pytest.raises(SuiteError, match=match):
        S.validate_features(*a, **kw)
    if case != "range":
        with pytest.raises(SuiteError):
            S.fit_protocol(*a, backend="cpu")
    assert not calls


def test_multilabel_validation():
    a = _ok()
    t = np.zeros((40, 3), np.float32)
    t[:, 0] = 1
    a[1] = t
    a[3] = np.ones((20, 3), np.float32)
    a[5] = np.ones((20, 3), np.float32)
    with pytest.raises(SuiteError, match="no positive training example"):
        S.validate_features(*a, metric="map11")
    a[3] = np.full((20, 3), 0.5, np.float32)
    with pytest.raises(SuiteError, match="other than 0 and 1"):
        S.validate_features(*a, metric="map11")


def test_bad_grid_and_backend():
    a = _ok()
    with pytest.raises(SuiteError, match="positive"):
        S.fit_protocol(*a, l2_grid=[1.0, -1.0])
    with pytest.raises(SuiteError, match="Unknown probe backend"):
        S.fit_protocol(*a, backend="gpu-magic")


def test_load_features_npz(tmp_path):
    f = make_features(20, 10, 10, 4, 2, seed=0)
    path = tmp_path / "f.npz"
    np.savez(path, **{k: v for k, v in zip(
        ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"), f.as_tuple())})
    g = load_features_npz(path)
    np.testing.assert_array_equal(g.x_val, f.x_val)
    np.savez(tmp_path / "bad.npz", x_train=f.x_train)
    with pytest.raises(SuiteError, match="lacks the array\\(s\\) y_train"):
        load_features_npz(tmp_path / "bad.npz")
    with pytest.raises(SuiteError, match="does not exist"):
        load_features_npz(tmp_path / "none.npz")


def test_make_features_is_deterministic():
    a = make_features(50, 20, 20, 16, 5, seed=3)
    b = make_features(50, 20, 20, 16, 5, seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.x_train.dtype == np.float32 and (a.x_train >= 0).all()
    assert set(np.unique(a.y_train)) == set(range(5))
