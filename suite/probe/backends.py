"""Baseline solvers of the same protocol: scikit-learn, cuML, and a naive torch.optim.LBFGS loop.

All three fit every grid value from strong to weak regularisation, warm-started, select on
validation (ties -> stronger regularisation), refit the selected value on train+val and score
test - exactly what :func:`suite.probe.solver.fit_protocol` promises, with a plain solver.

Objective scales: ours is ``sum_i CE_i + (l2/2)||W||^2``.

* scikit-learn sums the loss too and minimises ``C * sum_i CE_i + ||W||^2 / 2``, which is ours
  times ``C`` when ``C = 1 / l2``: the same minimiser.
* cuML's quasi-Newton solver minimises the MEAN loss, ``(1/n) sum_i CE_i + (alpha/2)||W||^2``,
  and its Python layer sets ``alpha = 1 / (C n)`` (since cuML 0.15, rapidsai/cuml PR #2494
  "Set QN regularization strength consistent with scikit-learn"; before it, ``alpha = 1/C``).
  Multiplying by ``n``: ``sum_i CE_i + (1 / (2C))||W||^2``, i.e. ours with ``l2 = 1/C``. So
  ``C = 1 / l2`` as for scikit-learn, and the ``n`` of each fit (train for the sweep,
  train+val for the refit) is already accounted for by cuML. Passing ``C = n / l2``, right for
  the raw mean-loss solver, would regularise ``n`` times too weakly here. The parity test
  against the reference backend (run where cuML is installed) pins this down.

Two classes: scikit-learn and cuML fit one binomial column ``w = w_1 - w_0``, penalised
``(l2/2)||w||^2``; our softmax keeps both columns, whose optimum has ``w_0 = -w_1``, so its
penalty is ``(l2/4)||w||^2``. A baseline at ``l2`` is ours at ``2 l2`` (about one grid step
apart on the paper's grid); the l2 they select on a binary dataset can differ by that step.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from suite import metrics
from suite.errors import SuiteError


def _order(grid):
    return sorted(grid, reverse=True)  # strong -> weak, for warm starts


def _select(sweep):
    return max(sweep, key=lambda t: (t[1], t[0]))


def _fit_result(sel, sweep, test_acc, w, b, grid):
    from suite.probe.solver import ProbeFit

    sweep = sorted(sweep, key=lambda t: grid.index(t[0]))
    return ProbeFit(sel[0], sel[1], test_acc, sweep, 0.0, "", np.asarray(w, np.float32),
                    np.asarray(b, np.float32))


# ------------------------------------------------------------------------------- scikit-learn

SKLEARN_MAX_ITER = 1000
SKLEARN_TOL = 1e-4


def _sk_model(l2: float, multilabel: bool, warm: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    lr = LogisticRegression(solver="lbfgs", C=1.0 / l2, warm_start=warm,
                            max_iter=SKLEARN_MAX_ITER, tol=SKLEARN_TOL)
    # One-vs-rest clones its estimator per class at every fit, so it cannot warm-start.
    return OneVsRestClassifier(lr) if multilabel else lr


def _sk_scores(model, x):
    s = model.decision_function(x) if hasattr(model, "decision_function") else \
        model.predict_proba(x)
    s = np.asarray(s)
    if s.ndim == 1:  # sklearn's binary case: one score for class 1
        s = np.stack([-s / 2, s / 2], 1)
    return s


def _sk_coef(model, k):
    if hasattr(model, "estimators_"):  # one-vs-rest
        w = np.stack([e.coef_[0] for e in model.estimators_], 1)
        b = np.array([e.intercept_[0] for e in model.estimators_])
        return w, b
    return model.coef_.T, model.intercept_


def _two_columns(w, b, multilabel: bool):
    """A binary (one-column) model as the two softmax columns with the same argmax."""
    if not multilabel and w.shape[1] == 1:
        w, b = np.concatenate([-w / 2, w / 2], 1), np.concatenate([-b / 2, b / 2])
    return w, b


def sklearn_protocol(x_train, y_train, x_val, y_val, x_test, y_test, *, l2_grid, metric, k):
    """scikit-learn ``LogisticRegression(solver="lbfgs", C=1/l2, warm_start=True)`` over the grid.

    The features are passed as given: scikit-learn's lbfgs path keeps float32 input in float32
    (its loss and gradient run in the input dtype; scipy's L-BFGS-B works on a float64 copy of
    the parameters only).
    """
    from suite.progress import track

    multilabel = metric == "map11"
    sweep = []
    model = _sk_model(l2_grid[0], multilabel, warm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at the weak end, by design
        for l2 in track(_order(l2_grid), "sklearn l2 sweep"):
            model.set_params(**({"estimator__C": 1.0 / l2} if multilabel else {"C": 1.0 / l2}))
            model.fit(x_train, y_train)
            sweep.append((l2, metrics.score(metric, _sk_scores(model, x_val), np.asarray(y_val))))
        sel = _select(sweep)
        refit = _sk_model(sel[0], multilabel, warm=False)
        refit.fit(np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]))
    test_acc = metrics.score(metric, _sk_scores(refit, x_test), np.asarray(y_test))
    w, b = _two_columns(*_sk_coef(refit, k), multilabel)
    return _fit_result(sel, sweep, test_acc, w, b, list(l2_grid))


# ------------------------------------------------------------------------------- cuML

def _cuml():
    try:
        import cuml  # noqa: F401
        from cuml.linear_model import LogisticRegression
    except ImportError:
        raise SuiteError(
            "The cuml probe backend needs RAPIDS cuML, which is not installed.",
            "On a CUDA machine run: pip install 'suite[cuml]' (or pick --backend cuda/cpu).",
        ) from None
    return LogisticRegression


def cuml_C(l2: float, n: int) -> float:
    """cuML's ``C`` for our ``l2`` on ``n`` rows: ``1 / l2`` (cuML scales its mean-loss penalty
    by ``1/n`` itself; see the module docstring)."""
    return 1.0 / l2


def cuml_protocol(x_train, y_train, x_val, y_val, x_test, y_test, *, l2_grid, metric, k):
    """cuML ``LogisticRegression`` (GPU quasi-Newton) over the grid, ``C = cuml_C(l2, n)``.

    Multi-label (map11) is not offered by cuML's multinomial solver: one binary fit per class.
    """
    LogisticRegression = _cuml()
    multilabel = metric == "map11"
    xtr = np.ascontiguousarray(x_train, np.float32)
    xva = np.ascontiguousarray(x_val, np.float32)
    xte = np.ascontiguousarray(x_test, np.float32)

    def fit(x, y, l2):
        n = x.shape[0]
        if multilabel:
            models = []
            for c in range(k):
                mdl = LogisticRegression(C=cuml_C(l2, n), max_iter=SKLEARN_MAX_ITER,
                                         tol=SKLEARN_TOL, fit_intercept=True)
                mdl.fit(x, np.asarray(y)[:, c].astype(np.float32))
                models.append(mdl)
            return models
        mdl = LogisticRegression(C=cuml_C(l2, n), max_iter=SKLEARN_MAX_ITER, tol=SKLEARN_TOL,
                                 fit_intercept=True)
        mdl.fit(x, np.asarray(y).astype(np.int32))
        return mdl

    def scores(mdl, x):
        if multilabel:
            return np.stack([np.asarray(m.decision_function(x)).reshape(-1) for m in mdl], 1)
        return np.asarray(mdl.predict_proba(x))

    sweep = []
    for l2 in _order(l2_grid):
        mdl = fit(xtr, y_train, l2)
        sweep.append((l2, metrics.score(metric, scores(mdl, xva), np.asarray(y_val))))
    sel = _select(sweep)
    yt = np.concatenate([y_train, y_val])
    mdl = fit(np.concatenate([xtr, xva]), yt, sel[0])
    test_acc = metrics.score(metric, scores(mdl, xte), np.asarray(y_test))
    if multilabel:
        w = np.stack([np.asarray(m.coef_).reshape(-1) for m in mdl], 1)
        b = np.array([float(np.asarray(m.intercept_).reshape(-1)[0]) for m in mdl])
    else:
        w, b = _two_columns(np.asarray(mdl.coef_).T, np.asarray(mdl.intercept_).reshape(-1),
                            multilabel)
    return _fit_result(sel, sweep, test_acc, w, b, list(l2_grid))


# ------------------------------------------------------------------------------- naive torch

def torch_lbfgs_protocol(x_train, y_train, x_val, y_val, x_test, y_test, *, l2_grid, metric="top1",
                         device="cpu", max_iter=100):
    """The naive loop (benchmark only): ``torch.optim.LBFGS`` per value, warm-started.

    Minimises the same objective divided by ``n`` (mean loss, so that the default gradient
    tolerances are scale-free), strong-Wolfe line search, ``max_iter`` iterations per value.
    Returns a :class:`~suite.probe.solver.ProbeFit` (top1 / mean_per_class only).
    """
    import torch

    t0 = time.perf_counter()
    dev = torch.device(device)
    xtr = torch.as_tensor(np.asarray(x_train, np.float32), device=dev)
    xva = torch.as_tensor(np.asarray(x_val, np.float32), device=dev)
    ytr = torch.as_tensor(np.asarray(y_train, np.int64), device=dev)
    k = int(max(np.max(y_train), np.max(y_val), np.max(y_test))) + 1
    w = torch.zeros(xtr.shape[1], k, device=dev, requires_grad=True)
    b = torch.zeros(k, device=dev, requires_grad=True)

    def fit(x, y, l2):
        n = x.shape[0]
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=10,
                                tolerance_grad=1e-6, tolerance_change=1e-9,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w + b, y, reduction="sum")
            loss = (loss + 0.5 * l2 * (w * w).sum()) / n
            loss.backward()
            return loss

        opt.step(closure)

    sweep, saved = [], {}
    for l2 in _order(l2_grid):
        fit(xtr, ytr, l2)
        with torch.no_grad():
            sc = (xva @ w + b).cpu().numpy()
        sweep.append((l2, metrics.score(metric, sc, np.asarray(y_val))))
        saved[l2] = (w.detach().clone(), b.detach().clone())
    sel = _select(sweep)
    with torch.no_grad():
        w.copy_(saved[sel[0]][0])
        b.copy_(saved[sel[0]][1])
    fit(torch.cat([xtr, xva]), torch.cat([ytr, torch.as_tensor(np.asarray(y_val, np.int64),
                                                                device=dev)]), sel[0])
    with torch.no_grad():
        xte = torch.as_tensor(np.asarray(x_test, np.float32), device=dev)
        test_acc = metrics.score(metric, (xte @ w + b).cpu().numpy(), np.asarray(y_test))
    from suite.probe.solver import ProbeFit

    fitres = _fit_result(sel, sweep, test_acc, w.detach().cpu().numpy(),
                         b.detach().cpu().numpy(), list(l2_grid))
    return ProbeFit(fitres.selected_l2, fitres.val_accuracy, fitres.test_accuracy, fitres.sweep,
                    time.perf_counter() - t0, "torch_lbfgs", fitres.weight, fitres.bias)


__all__ = ["sklearn_protocol", "cuml_protocol", "cuml_C", "torch_lbfgs_protocol"]
