"""The paper's fixed-feature protocol: L2 logistic regression over a regularisation grid.

For every ``l2`` in the grid (default: the paper's 45 values, 1e-6..1e5) fit

    minimise  sum_i CE(x_i W + b, y_i) + (l2 / 2) ||W||_F^2     (scikit-learn's C = 1 / l2)

on the training split, score the validation split with the dataset's metric, select the best
value (ties go to the stronger regularisation), refit it on train+val and score the test split.
Multi-label datasets (metric ``map11``) use one-vs-rest sigmoids with the same penalty.

Solvers (``ProbeBackend``):

* ``cpu`` / ``cuda`` / ``reference`` - one algorithm (``suite.probe._engine``), which needs far
  fewer passes over the features than a plain L-BFGS sweep:

  1. one eigendecomposition of the centred training Gram matrix; in its eigenbasis the
     Kronecker-factored (K-FAC) estimate of the Hessian is diagonal, giving L-BFGS a
     preconditioner that is exact for the penalty and costs nothing to change with ``l2`` or
     to refresh as the fit grows confident (Böhning's bound sets the stopping tolerance);
  2. the path runs from strong to weak regularisation, warm-started, and the L-BFGS memory and
     the last gradient are carried along (curvature pairs stay exact when ``l2`` changes, so a
     neighbouring value often needs only a few evaluations);
  3. ``search="exhaustive"`` (the default, the paper's protocol): *every* value of the grid is
     fitted to the refit's tolerance (``SWEEP_OPTS``) and scored, so the selection is the
     full sweep's by construction - nothing is skipped and no score comes from an unconverged
     fit (tests/test_probe_selection.py checks it against float64 Newton on real features).
     Each value starts from the path's linear extrapolation in log l2 of the two values before
     it (the solution path is smooth in log l2), which saves about a third of the evaluations
     over restarting from the previous solution;
  4. ``search="adaptive"`` is an *approximation*, off by default: during the search a value
     stops as soon as its validation predictions have settled, the path stops once validation
     accuracy has turned down (``PATIENCE`` values in a row below the best, or ``DROP_RUN``
     values more than ``DROP`` points below), and the best value and its neighbours within
     ``POLISH_MARGIN`` are converged before the selection. Validation accuracy on real
     features is neither unimodal nor free of plateaus (scikit-learn's digits and wine, few
     examples per class), so it can stop on a bump and select a worse value;
  5. the refit of the selected value on train+val converges fully.

  They differ only in where they run: ``reference`` is plain PyTorch (reference kernels),
  ``cpu`` uses the fused kernels of :mod:`suite.kernels` with MKL GEMMs, ``cuda`` the CUDA kernels
  with cuBLAS GEMMs and batches several grid values into one GEMM.
* ``sklearn`` - the baseline of the paper's public re-implementations (lbfgs, warm-started).
* ``cuml`` - RAPIDS cuML's GPU logistic regression (optional extra).

``sweep`` lists ``(l2, validation accuracy)`` for the values that were fitted, in grid order
(every value, except with ``search="adaptive"``, which skips the weak values past the point
where it stopped).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from suite import kernels as K
from suite import metrics
from suite.config import PAPER_L2_GRID, ProbeBackend
from suite.errors import SuiteError
from suite.probe import _engine as E
from suite.progress import make_progress

# Early stop of the path (strong -> weak): the weaker rest is skipped once PATIENCE values in a
# row (a decade of the paper's grid) score below the best, or DROP_RUN values in a row score more
# than DROP points below it.
PATIENCE = 4
DROP_RUN = 2
DROP = 1.0
CUDA_MAX_BATCH = 8  # grid values per GEMM on a GPU (more columns, higher FLOP rate)

# Per-value stopping rules. During the search a value stops once its validation predictions
# are unchanged for `settle` iterations; the refit (the model that is scored) converges.
SEARCH_OPTS = E.SolveOptions(max_iter=40, tol=1e-5, ftol=1e-8, settle=3)
# The exhaustive search converges every value as tightly as the refit. The tolerance is a
# Böhning gap per example (SolveOptions.tol); 1e-9 is near what float32 logits resolve, and it
# is what it takes: at 1e-7 or 1e-8 a value near a flat validation peak can sit one validation
# example away from its float64 optimum and flip the selection (the tiny study's features in
# tests/test_probe_selection.py), and refining only the values near the top from looser fits
# did not converge the weak end (its loss changes fall below float32 resolution first).
REFIT_OPTS = E.SolveOptions(max_iter=1000, tol=1e-9, ftol=1e-12, settle=0)
SWEEP_OPTS = REFIT_OPTS
SEARCHES = ("exhaustive", "adaptive")  # the default first
POLISH_OPTS = E.SolveOptions(max_iter=60, tol=1e-7, ftol=1e-10, settle=0)
POLISH_MARGIN = 0.5  # percentage points (adaptive search)


@dataclass(frozen=True)
class ProbeFit:
    """Result of :func:`fit_protocol`. Accuracies are percent (by the dataset's metric)."""

    selected_l2: float
    val_accuracy: float  # of the selected value, fitted on train
    test_accuracy: float  # of the refit on train+val
    sweep: list[tuple[float, float]]  # (l2, validation accuracy) of every fitted value
    seconds: float  # wall time of the whole protocol
    backend: str  # the backend that ran (auto resolved)
    weight: np.ndarray  # (d, k) of the refit
    bias: np.ndarray  # (k,)
    evaluations: int = 0  # function+gradient evaluations over the full training data
    timings: dict | None = None  # seconds per phase (basis, rotate, sweep, refit, score)


# ----------------------------------------------------------------------------------- checks

def validate_features(x_train, y_train, x_val, y_val, x_test, y_test, *, metric: str = "top1",
                      num_classes: int | None = None) -> int:
    """Check the six arrays before any fitting; return the number of classes ``k``.

    Raises :class:`SuiteError` on: non-2-D or empty features, NaN/inf features (how many and in
    which split), mismatched x/y lengths, feature-dimension mismatch between splits, labels that
    are not integers in range (multi-label: not (n, k) 0/1), a single class, or a class without
    training examples (multi-label: without a positive training example).
    """
    if metric not in metrics.METRICS:
        raise SuiteError(f"Unknown metric {metric!r}.", f"Use one of {', '.join(metrics.METRICS)}.")
    multilabel = metric == "map11"
    splits = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    dims = {}
    for name, (x, y) in splits.items():
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] == 0:
            raise SuiteError(f"The {name} features must be a non-empty 2-D array (n, d); got "
                             f"shape {x.shape}.", "Pass one feature row per example.")
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            nan = int(np.count_nonzero(np.isnan(x)))
            raise SuiteError(
                f"The {name} features contain {bad} non-finite value(s) ({nan} NaN, "
                f"{bad - nan} inf) in {int((~np.isfinite(x)).any(1).sum())} of {x.shape[0]} rows.",
                "Re-extract the features (a diverged or half-written checkpoint or cache gives "
                "NaN/inf), or drop those rows.")
        y = np.asarray(y)
        if y.shape[0] != x.shape[0]:
            raise SuiteError(f"The {name} split has {x.shape[0]} feature rows but {y.shape[0]} "
                             "labels.", "Pass exactly one label per feature row.")
        dims[name] = x.shape[1]
    if len(set(dims.values())) > 1:
        raise SuiteError("The splits have different feature dimensions: " + ", ".join(
            f"{k} {v}" for k, v in dims.items()) + ".",
            "Extract all splits with the same model (and the same layer).")
    if multilabel:
        return _validate_multilabel(splits)
    ys = {name: np.asarray(y) for name, (_, y) in splits.items()}
    for name, y in ys.items():
        if y.ndim != 1:
            raise SuiteError(f"The {name} labels must be a 1-D array of class indices; got shape "
                             f"{y.shape}.", "Multi-label targets (n, k) need metric='map11'.")
        if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
            raise SuiteError(f"The {name} labels are not integers (dtype {y.dtype}).",
                             "Pass class indices 0..k-1.")
    k = int(max(int(y.max()) for y in ys.values())) + 1
    if num_classes is not None:
        k = num_classes
    for name, y in ys.items():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= k:
            raise SuiteError(f"The {name} labels lie in [{lo}, {hi}], outside the class range "
                             f"[0, {k - 1}].", "Labels must be class indices 0..k-1.")
    present = np.unique(ys["train"])
    if present.size < 2:
        raise SuiteError(f"The training split has a single class ({int(present[0])}).",
                         "Logistic regression needs at least two classes.")
    missing = np.setdiff1d(np.arange(k), present)
    if missing.size:
        shown = ", ".join(str(int(c)) for c in missing[:10]) + (" ..." if missing.size > 10 else "")
        raise SuiteError(f"{missing.size} class(es) have no training examples: {shown}.",
                         "Every class needs training examples; check the split or the labels.")
    return k


def _validate_multilabel(splits) -> int:
    ks = set()
    for name, (_, y) in splits.items():
        y = np.asarray(y)
        if y.ndim != 2:
            raise SuiteError(f"The {name} targets must be (n, k) 0/1 for metric map11; got shape "
                             f"{y.shape}.", "Pass one 0/1 column per class.")
        if not np.all((y == 0) | (y == 1)):
            raise SuiteError(f"The {name} targets contain values other than 0 and 1.",
                             "Pass binary (n, k) targets.")
        ks.add(y.shape[1])
    if len(ks) > 1:
        raise SuiteError(f"The splits have different numbers of classes: {sorted(ks)}.",
                         "All splits need the same (n, k) target columns.")
    k = ks.pop()
    pos = np.asarray(splits["train"][1]).sum(0)
    missing = np.nonzero(pos == 0)[0]
    if missing.size:
        raise SuiteError(f"{missing.size} class(es) have no positive training example: "
                         f"{', '.join(str(int(c)) for c in missing[:10])}.",
                         "Every class needs positive training examples.")
    return k


# ----------------------------------------------------------------------------------- protocol

def resolve_backend(backend: ProbeBackend | str, device=None) -> tuple[str, torch.device]:
    """``auto`` -> cuda when the CUDA kernels and a GPU are there (and ``device`` allows), else
    cpu. Returns (backend name, torch device)."""
    backend = backend.value if isinstance(backend, ProbeBackend) else str(backend)
    if backend not in {b.value for b in ProbeBackend}:
        raise SuiteError(f"Unknown probe backend {backend!r}.",
                         "Use one of: " + ", ".join(b.value for b in ProbeBackend) + ".")
    dev = torch.device(device) if device not in (None, "", "auto") else None
    if backend == "auto":
        gpu_ok = K.has_cuda() and (dev is None or dev.type == "cuda")
        backend = "cuda" if gpu_ok else "cpu"
    if backend == "cuda":
        K.require_cuda()
        dev = dev if dev is not None and dev.type == "cuda" else torch.device("cuda")
    elif backend in ("cpu", "sklearn"):
        dev = torch.device("cpu")
    elif dev is None:
        dev = torch.device("cpu")
    return backend, dev


def fit_protocol(x_train, y_train, x_val, y_val, x_test, y_test, *,
                 l2_grid: Sequence[float] = PAPER_L2_GRID,
                 backend: ProbeBackend | str = ProbeBackend.auto, metric: str = "top1",
                 device=None, search: str = "exhaustive", tf32: bool = False) -> ProbeFit:
    """Run the whole protocol (select l2 on val, refit on train+val, score test).

    ``search``: ``"exhaustive"`` (default: every value converged and scored) or ``"adaptive"``
    (an approximation: settled fits, early-stopped path; see the module docstring) for the
    cpu/cuda/reference backends; the baselines always fit every value. ``tf32``: allow
    TF32 GEMMs on a GPU (faster; off by default so that cuda matches cpu to float32 precision).
    """
    t0 = time.perf_counter()
    k = validate_features(x_train, y_train, x_val, y_val, x_test, y_test, metric=metric)
    grid = [float(v) for v in l2_grid]
    if not grid or any(not np.isfinite(v) or v <= 0 for v in grid):
        raise SuiteError("The l2 grid must be a non-empty list of positive numbers.",
                         "Use the paper's grid (suite.config.PAPER_L2_GRID) or positive values.")
    search = getattr(search, "value", search)
    if search not in SEARCHES:
        raise SuiteError(f"Unknown probe search {search!r}.",
                         "Use 'exhaustive' (the paper's full sweep, the default) or 'adaptive' "
                         "(a faster approximation that can select a worse value).")
    name, dev = resolve_backend(backend, device)
    data = (x_train, y_train, x_val, y_val, x_test, y_test)
    if name == "sklearn":
        from suite.probe.backends import sklearn_protocol
        fit = sklearn_protocol(*data, l2_grid=grid, metric=metric, k=k)
    elif name == "cuml":
        from suite.probe.backends import cuml_protocol
        fit = cuml_protocol(*data, l2_grid=grid, metric=metric, k=k)
    else:
        kernels = E.REFERENCE if name == "reference" else E.FUSED
        batch = _cuda_batch(np.shape(x_train), k, dev) if name == "cuda" else 1
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32 and dev.type == "cuda")
        try:
            fit = engine_protocol(*data, l2_grid=grid, metric=metric, k=k, device=dev,
                                  kernels=kernels, search=search, batch=batch)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    return _finish(fit, name, time.perf_counter() - t0)


def _cuda_batch(shape, k: int, device: torch.device) -> int:
    """Grid values per GEMM on a GPU: up to CUDA_MAX_BATCH, as many as fit in half the free
    memory. Per value: the (n, k) logits block plus ~(2 * memory + 8) parameter-sized (d+1, k)
    tensors (L-BFGS pairs, iterate, gradients, direction)."""
    n, d = shape
    per_value = 4 * (n * k + (2 * E.SolveOptions().memory + 8) * (d + 1) * k)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(CUDA_MAX_BATCH, (free // 2) // max(per_value, 1))))


def _finish(fit: ProbeFit, backend: str, seconds: float) -> ProbeFit:
    return ProbeFit(fit.selected_l2, fit.val_accuracy, fit.test_accuracy, fit.sweep, seconds,
                    backend, fit.weight, fit.bias, fit.evaluations, fit.timings)


def select(sweep: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Best (l2, accuracy); ties go to the stronger regularisation (larger l2)."""
    return max(sweep, key=lambda t: (t[1], t[0]))


def _labels(y, multilabel: bool, dev: torch.device) -> torch.Tensor:
    if multilabel:
        return torch.as_tensor(np.asarray(y, dtype=np.float32), device=dev).contiguous()
    return torch.as_tensor(np.asarray(y).astype(np.int64), device=dev).contiguous()


def _feats(x, dev: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=dev)


def engine_protocol(x_train, y_train, x_val, y_val, x_test, y_test, *, l2_grid, metric, k,
                    device, kernels: E.Kernels, search: str = "exhaustive", batch: int = 1
                    ) -> ProbeFit:
    """The cpu/cuda/reference protocol (see the module docstring)."""
    multilabel = metric == "map11"
    clock = _Clock(device)
    xtr, xva = _feats(x_train, device), _feats(x_val, device)
    ytr = _labels(y_train, multilabel, device)
    basis = E.make_basis(xtr)
    clock("basis")
    ztr, zva = E.rotate(xtr, basis), E.rotate(xva, basis)
    clock("rotate")
    del xtr, xva
    train = E.make_problem(ztr, ytr, k, multilabel, kernels, s=basis.s)
    yva = np.asarray(y_val)

    def val_scores(theta: torch.Tensor) -> torch.Tensor:  # (n_val, m, k)
        return E.scores(zva, theta)

    order = sorted(range(len(l2_grid)), key=lambda i: -l2_grid[i])  # strong -> weak
    path = [l2_grid[i] for i in order]
    results: dict[int, float] = {}  # position on the path -> val accuracy
    # position -> solution of every fitted value; the L-BFGS memory and gradient only for the
    # warm start and the best value's neighbourhood (the rest keep their weights alone)
    states: dict[int, E.State] = {}
    evals = 0
    with make_progress() as progress:
        task = progress.add_task(f"probe l2 sweep ({len(path)} values)", total=len(path))

        def run(positions: list[int], start: E.State | None,
                opts: E.SolveOptions = SEARCH_OPTS) -> E.State:
            """Fit ``positions`` (consecutive on the path, strong -> weak) in batches, each
            batch warm-started from the weakest value solved before it - extrapolated along
            the path when the values are converged (``settle == 0``)."""
            nonlocal evals
            st = start
            last: list[tuple[float, torch.Tensor]] = []  # (log l2, theta (d+1, 1, k)) x <= 2
            for lo in range(0, len(positions), batch):
                chunk = positions[lo:lo + batch]
                m = len(chunk)
                init = E.zeros_state(train.d, m, k, ztr) if st is None else \
                    st.take(st.theta.shape[1] - 1, m)
                if opts.settle == 0 and len(last) == 2:
                    init = _extrapolate(init, last, [math.log(path[p]) for p in chunk])
                l2 = torch.tensor([path[p] for p in chunk], dtype=ztr.dtype, device=device)
                st = E.solve(train, l2, init, opts, on_iter=_settle_tracker(
                    val_scores, kernels, multilabel, opts.settle))
                evals += st.evals
                if m > 1:
                    last = [(math.log(path[chunk[-2]]), st.theta[:, -2:-1])]
                last = (last + [(math.log(path[chunk[-1]]), st.theta[:, -1:])])[-2:]
                sc = val_scores(st.theta).cpu().numpy()
                for j, p in enumerate(chunk):
                    results[p] = metrics.score(metric, sc[:, j], yva)
                    states[p] = st if m == 1 else st.take(j)
                top = max(results, key=lambda q: (results[q], -q))
                keep = {chunk[-1], top - 1, top, top + 1}
                for q in states:
                    if q not in keep and states[q].gl is not None:
                        states[q] = E.State(theta=states[q].theta)
                progress.advance(task, m)
            return st

        if search == "exhaustive":
            run(list(range(len(path))), None, SWEEP_OPTS)
        else:
            _path_search(path, run, results, batch)
        progress.update(task, completed=len(path))
    clock("sweep")
    if search == "exhaustive":  # every score is of a converged fit: select among them
        top = max(results, key=lambda p: (results[p], -p))  # ties -> stronger (earlier)
    else:
        top, evals = _polish(results, states, path, train, val_scores, metric, yva, evals)
    clock("polish")
    pos = top
    sel_l2, sel_acc = path[pos], results[pos]

    # Refit on train+val from the selected solution. The train+val rows are re-centred
    # (shift), so the bias absorbs shift @ U to start from the same function.
    ztv = torch.cat([ztr, zva])
    ytv = torch.cat([ytr, _labels(y_val, multilabel, device)])
    tv = E.make_problem(ztv, ytv, k, multilabel, kernels)
    start = states[pos]
    theta = start.theta.clone()
    theta[-1] += (tv.shift @ theta[:-1].reshape(tv.d, -1)).view(1, k)
    l2 = torch.tensor([sel_l2], dtype=ztv.dtype, device=device)
    pairs = _carry_pairs(start.pairs, tv.shift, tv.n / train.n) if REFIT_CARRY else []
    st = E.solve(tv, l2, E.State(theta, pairs), REFIT_OPTS)
    evals += st.evals
    clock("refit")
    u, c = st.theta[:-1, 0], st.theta[-1, 0]  # (d, k), (k,)
    w = basis.v @ u  # (d, k) back in the feature basis
    # logits = (x - mu) V U - shift U + c  =  x W + (c - mu W - shift U)
    b = c - basis.mu @ w - tv.shift @ u
    xte = _feats(x_test, device)
    test_scores = (xte @ w + b).cpu().numpy()
    test_acc = metrics.score(metric, test_scores, np.asarray(y_test))
    sweep = sorted(((path[p], a) for p, a in results.items()),
                   key=lambda t: l2_grid.index(t[0]))
    w, b = w.cpu().numpy(), b.cpu().numpy()
    clock("score")
    return ProbeFit(sel_l2, sel_acc, test_acc, sweep, 0.0, "", w, b, evals, clock.phases)


def _polish(results, states, path, train, val_scores, metric, yva, evals):
    """The adaptive search's selection: converge the settled top and its neighbours.

    Its settled, unconverged fits rank values well but not to the last example, and near the
    peak neighbours often differ by one or two validation examples: the top and its neighbours
    within ``POLISH_MARGIN`` points (or 3 validation examples) are converged and re-scored.
    Polishing can lower the top's score below another value's; that value is then the top and
    is polished in turn (from its weights alone when its L-BFGS memory was dropped), until the
    top is a converged fit. Returns (position of the selected value, evaluations so far).
    """
    margin = max(POLISH_MARGIN, 300.0 / max(len(yva), 1))
    polished: set[int] = set()
    while True:
        top = max(results, key=lambda p: (results[p], -p))  # ties -> stronger (earlier)
        todo = [p for p in (top - 1, top, top + 1) if p in results and p not in polished
                and results[p] >= results[top] - margin]
        if not todo:
            return top, evals
        for p in todo:
            l2 = torch.tensor([path[p]], dtype=train.z.dtype, device=train.z.device)
            states[p] = E.solve(train, l2, states[p].take(0), POLISH_OPTS)
            evals += states[p].evals
            results[p] = metrics.score(metric, val_scores(states[p].theta)[:, 0].cpu().numpy(),
                                       yva)
            polished.add(p)


REFIT_CARRY = True


def _carry_pairs(pairs, shift: torch.Tensor, scale: float):
    """Curvature pairs of the training problem, mapped to the refit's parameters.

    The refit's bias is ``c' = c + shift @ U`` (a linear change of variables ``theta' = A
    theta``), so steps map as ``s' = A s`` and gradient differences as ``r' = A^-T r``:
    ``r'_U = r_U - shift (x) r_c``. Train+val has ``scale`` times the rows of train, and about
    ``scale`` times its curvature. The pairs are approximate - L-BFGS only needs them to be
    roughly right, the line search keeps every step a descent step.
    """
    out = []
    d = shift.shape[0]
    for s, r in pairs:
        s2, r2 = s.clone(), r * scale
        s2[d] += torch.einsum("i,imk->mk", shift, s[:d])
        r2[:d] -= shift.view(d, 1, 1) * r2[d].unsqueeze(0)
        out.append((s2, r2))
    return out


class _Clock:
    """Wall time per phase (synchronising a GPU so that its queued work is counted)."""

    def __init__(self, device: torch.device):
        self.device, self.t, self.phases = device, time.perf_counter(), {}

    def __call__(self, phase: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.t
        self.t = now


def _path_search(path, run, results, batch: int = 1) -> None:
    """Walk the path strong -> weak, ``batch`` warm-started values at a time, and stop once the
    validation score has clearly turned down (see PATIENCE / DROP).

    Validation accuracy against log l2 is near-unimodal (rising while the probe is
    over-regularised, falling once it overfits), so values past a sustained fall cannot win.
    Neighbouring values are cheap to reach from each other (a few evaluations, fewer at the
    weak end); the tests check that this selects what an exhaustive sweep selects.
    """
    st, best, below, far = None, None, 0, 0
    for lo in range(0, len(path), batch):
        chunk = list(range(lo, min(lo + batch, len(path))))
        st = run(chunk, st)
        for p in chunk:
            if best is None or results[p] > results[best]:  # strict: ties keep the stronger
                best, below, far = p, 0, 0
                continue
            below += 1
            far = far + 1 if results[p] < results[best] - DROP else 0
        if below >= PATIENCE or far >= DROP_RUN:
            break


def _extrapolate(init: E.State, last: list[tuple[float, torch.Tensor]],
                 targets: list[float]) -> E.State:
    """Warm start of the next values: the solution path's linear extrapolation in log l2.

    ``last`` holds the two previous converged solutions ``(log l2_a, theta_a), (log l2_b,
    theta_b)``; value j at ``log l2 = t_j`` starts from ``theta_b + (t_j - t_b) / (t_b - t_a) *
    (theta_b - theta_a)``. The weights move smoothly with log l2 (their derivative is
    ``-H^-1 [U; 0]``), so a first-order step along the path beats restarting from ``theta_b``.
    The L-BFGS memory is kept (data-gradient pairs do not depend on l2); the loss and gradient
    are not (they belong to ``theta_b``), so ``solve`` evaluates the start once.
    """
    (ta, a), (tb, b) = last
    slope = b - a  # (d+1, 1, k)
    theta = torch.cat([b + ((t - tb) / (tb - ta)) * slope for t in targets], dim=1)
    return E.State(theta=theta, pairs=init.pairs)


def _settle_tracker(val_scores, kernels: E.Kernels, multilabel: bool, settle: int):
    """``on_iter`` callback: True for values whose validation predictions did not change over
    the last ``settle`` iterations (argmax class; multi-label: the sign pattern)."""
    if settle <= 0:
        return None
    history: list[torch.Tensor] = []  # the last settle + 1 predictions

    def on_iter(theta: torch.Tensor) -> torch.Tensor:
        sc = val_scores(theta)  # (n_val, m, k)
        pred = (sc > 0) if multilabel else kernels.argmax(sc.contiguous())
        n, m = sc.shape[0], sc.shape[1]
        history.append(pred)
        if len(history) > settle + 1:
            history.pop(0)
        same = torch.full((m,), len(history) == settle + 1, dtype=torch.bool, device=sc.device)
        for h in history[:-1]:
            same &= (h == pred).reshape(n, m, -1).all(2).all(0)
        return same

    return on_iter


__all__ = ["ProbeFit", "fit_protocol", "validate_features", "resolve_backend", "select",
           "engine_protocol", "PATIENCE", "DROP", "DROP_RUN", "SEARCHES"]
