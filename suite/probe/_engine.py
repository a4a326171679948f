"""The probe's numerical core: the objective in a rotated basis, and preconditioned L-BFGS.

Problem (one regularisation value ``l2``; ``n`` examples, ``d`` features, ``k`` classes)::

    minimise  f(W, b) = sum_i CE(x_i W + b, y_i) + (l2 / 2) ||W||_F^2          W (d, k), b (k,)

(one-vs-rest: CE -> sum over classes of the binary cross-entropy of a sigmoid).

**Basis.** Centre the features with the training mean ``mu`` and rotate them into the
eigenbasis of the centred Gram matrix, ``(X - 1 mu^T)^T (X - 1 mu^T) = V diag(s) V^T``::

    Z = (X - 1 mu^T) V   (n, d),    W = V U,    b = c - mu^T W.

The penalty is rotation invariant (``||W|| = ||U||``), the bias stays unregularised, and the
logits are ``Z U + c``. In this basis both curvature models below are diagonal.

**Preconditioner.** The Hessian of the data term is ``sum_i (diag(p_i) - p_i p_i^T) (x)
z_i z_i^T`` (softmax; sigmoids: ``diag(p_i (1 - p_i))``). Replacing the per-example class factor
by its average over the data (the Kronecker-factored, K-FAC, approximation) and keeping its
diagonal gives, in the rotated basis where ``Z^T Z = diag(s)``,

    H_0^{-1} = diag(1 / (s_j h_c / n + l2))  on U[j, c],     1 / h_c  on c[c],
    h_c = sum_i p_ic (1 - p_ic),

an elementwise scaling that is exact for the penalty, tracks how confident the current fit is
per class (``h_c`` falls from ``n/k`` towards 0 as the classes separate), and costs one pass over
the ``(n, k)`` block to refresh: :func:`_class_curvature` gets ``h`` from ``G = P - Y`` as
``sum_i G - G^2 - 2 Y G``. L-BFGS uses it as ``H_0`` (rescaled by the usual
``s^T y / y^T H_0 y``) and learns the rest (the off-diagonal class coupling, the feature/class
correlation the K-FAC average ignores). On the paper-sized benchmark it needs 56 full-data
evaluations for the protocol where the data-independent bound below needed 115.

**Stopping (Böhning's bound).** ``diag(p) - p p^T <= 1/2 (I - 1 1^T / k)`` bounds the Hessian by
``M = beta * (I - 1 1^T / k) (x) blockdiag(Z^T Z, n) + l2 I_U`` (``beta = 1/2``; ``1/4`` for
sigmoids), and on the sum-to-zero subspace where gradients live ``M^{-1} = diag(1 / (beta s_j +
l2))`` on row j of U and ``1 / (beta n)`` on c. ``g^T M^{-1} g / 2`` is then a lower bound on
``f - f*`` that means the same at every ``l2``: the tolerance of :class:`SolveOptions`. The
majorise-minimise step ``-M^{-1} g`` is also the fallback when the L-BFGS direction is not a
descent direction.

**Curvature pairs survive a change of l2.** We store ``s_t = theta_{t+1} - theta_t`` and the
difference of the *data* gradients ``r_t = gL(theta_{t+1}) - gL(theta_t)``; the secant pair for
the objective at any ``l2`` is ``(s_t, r_t + l2 * s_t|_U)`` exactly. So warm-starting the next
value of the path keeps the whole L-BFGS memory, not just the weights.

**Batches of values.** ``m`` values are solved at once: parameters ``theta`` are ``(d+1, m, k)``
(rows ``0..d-1`` = U, row ``d`` = c), one GEMM ``Z @ U.view(d, m*k)`` gives the logits of all of
them as ``(n, m, k)``, the fused kernel turns them into ``P - Y`` in place, and one GEMM
``Z^T @ G`` gives all weight gradients. On a CPU ``m = 1`` (GEMM time is linear in ``m``); on a
GPU wider products run at a higher FLOP rate.

Kernels: ``kernels`` is a :class:`Kernels` triple - :mod:`suite.kernels`' fused kernels for the
cpu/cuda backends, or their plain-PyTorch references for the reference backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from suite import kernels as K


@dataclass(frozen=True)
class Kernels:
    """The three non-GEMM operations of an evaluation (see :mod:`suite.kernels`)."""

    softmax_xent_grad_: Callable  # (logits (n,m,k), labels (n,)) -> (loss (m,) f64, gbias (m,k))
    sigmoid_bce_grad_: Callable  # (logits (n,m,k), targets (n,k)) -> same
    argmax: Callable  # (logits (n,m,k)) -> (n,m) int64


def _ref_softmax_(logits, labels):
    loss, g, gb = K.reference_softmax_xent_grad(logits, labels)
    logits.copy_(g)
    return loss, gb


def _ref_sigmoid_(logits, targets):
    loss, g, gb = K.reference_sigmoid_bce_grad(logits, targets)
    logits.copy_(g)
    return loss, gb


FUSED = Kernels(K.softmax_xent_grad_, K.sigmoid_bce_grad_, K.argmax)
REFERENCE = Kernels(_ref_softmax_, _ref_sigmoid_, K.reference_argmax)


# ----------------------------------------------------------------------------------- basis

@dataclass
class Basis:
    """Centring + rotation shared by every value of the sweep and by the refit."""

    mu: torch.Tensor  # (d,) training mean
    v: torch.Tensor  # (d, d) eigenvectors of the centred training Gram matrix (columns)
    s: torch.Tensor  # (d,) its eigenvalues, >= 0


def make_basis(x: torch.Tensor) -> Basis:
    """Eigendecomposition of the centred Gram matrix of ``x`` (n, d); one ``d x d`` eigh.

    Float32 throughout: the basis only shapes the preconditioner (an error there costs
    iterations, never accuracy: the objective is evaluated on the rotated features exactly, and
    ``V`` is orthogonal to float32 precision either way).
    """
    mu = x.mean(0)
    xc = x - mu
    gram = _gram(xc)  # (d, d), lower triangle valid
    s, v = torch.linalg.eigh(gram, UPLO="L")
    return Basis(mu=mu, v=v.contiguous(), s=s.clamp_min(0))


def _gram(xc: torch.Tensor) -> torch.Tensor:
    """``xc^T xc`` (lower triangle). On a CPU BLAS ``ssyrk`` does half the flops of a GEMM."""
    if xc.device.type == "cpu" and xc.dtype == torch.float32:
        from scipy.linalg import blas

        a = xc.numpy().T  # (d, n), Fortran order: ssyrk computes a @ a.T without a copy
        return torch.from_numpy(blas.ssyrk(1.0, a, trans=0, lower=1))
    return xc.T @ xc


def rotate(x: torch.Tensor, basis: Basis) -> torch.Tensor:
    """``(x - mu) @ V`` (n, d): features in the eigenbasis."""
    return (x - basis.mu) @ basis.v


# ----------------------------------------------------------------------------------- problem

@dataclass
class Problem:
    """Rotated data of one fit: ``logits = (Z - 1 shift^T) U + c``.

    ``shift`` re-centres the rows when they are not the ones the basis was built from (the refit
    on train+val); ``diag`` is the diagonal of the centred Gram matrix in the rotated basis,
    which is exact (``= s``) for the training rows and a good approximation otherwise.
    """

    z: torch.Tensor  # (n, d) float32
    y: torch.Tensor  # (n,) int64 labels, or (n, k) float32 0/1 targets (multilabel)
    k: int
    multilabel: bool
    shift: torch.Tensor | None  # (d,) or None
    diag: torch.Tensor  # (d,) curvature of the data term per rotated feature
    kernels: Kernels

    @property
    def n(self) -> int:
        return self.z.shape[0]

    @property
    def d(self) -> int:
        return self.z.shape[1]

    @property
    def beta(self) -> float:
        # Böhning: softmax Hessian <= 1/2 (I - 11^T/k); sigmoid'' <= 1/4.
        return 0.25 if self.multilabel else 0.5


def make_problem(z: torch.Tensor, y: torch.Tensor, k: int, multilabel: bool, kernels: Kernels,
                 s: torch.Tensor | None = None) -> Problem:
    """Wrap rotated features. Pass ``s`` when ``z`` are exactly the basis' centred rows."""
    if s is not None:
        return Problem(z, y, k, multilabel, None, s, kernels)
    shift = z.mean(0)  # (d,)
    diag = (z * z).sum(0) - z.shape[0] * shift * shift  # diag of the centred Gram matrix
    return Problem(z, y, k, multilabel, shift, diag.clamp_min(0), kernels)


def evaluate(p: Problem, theta: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Data loss and its gradient for ``m`` values at once (the penalty is added by the caller).

    theta (d+1, m, k) -> loss (m,) float64, gradient (d+1, m, k), and the class curvatures
    ``h`` (m, k) of the preconditioner. Two GEMMs with the (n, d) features; the rest is one
    fused kernel pass over the (n, m, k) logits block, which it overwrites with P - Y, and one
    reduction over it.
    """
    d, m, k = p.d, theta.shape[1], p.k
    u = theta[:d].reshape(d, m * k)  # (d, m*k), a view
    c = theta[d]  # (m, k)
    logits = (p.z @ u).view(p.n, m, k)  # (n, m, k)   GEMM 1
    logits += c if p.shift is None else c - (p.shift @ u).view(m, k)  # (centred rows)
    if p.multilabel:
        loss, gbias = p.kernels.sigmoid_bce_grad_(logits, p.y)
    else:
        loss, gbias = p.kernels.softmax_xent_grad_(logits, p.y)
    gl = torch.empty_like(theta)
    # GEMM 2 as (G^T Z)^T: with row-major Z, MKL runs G^T Z ~20% faster than Z^T G.
    gl[:d] = torch.mm(logits.view(p.n, m * k).T, p.z).T.view(d, m, k)
    h = _class_curvature(p, logits, gbias)
    if p.shift is not None:  # d/dU of -(1 shift^T U) = -shift (x) colsum(P - Y)
        gl[:d] -= p.shift.view(d, 1, 1) * gbias.view(1, m, k)
    gl[d] = gbias
    return loss, gl, h


def _class_curvature(p: Problem, g: torch.Tensor, gbias: torch.Tensor) -> torch.Tensor:
    """sum_i p_ic (1 - p_ic) per (value, class) from G = P - Y (n, m, k): G - G^2 - 2 Y G."""
    n, m, k = g.shape
    sq = torch.linalg.vector_norm(g, 2, dim=0).square()  # no (n, m, k) temporary
    if p.multilabel:
        yg = torch.einsum("nk,nmk->mk", p.y, g)
    else:
        gy = g.gather(2, p.y.view(n, 1, 1).expand(n, m, 1)).squeeze(2)  # (n, m)
        yg = torch.zeros((m, k), dtype=g.dtype, device=g.device).index_add_(1, p.y, gy.T)
    return gbias - sq - 2.0 * yg


def scores(z: torch.Tensor, theta: torch.Tensor, shift: torch.Tensor | None = None
           ) -> torch.Tensor:
    """Logits (n, m, k) of rows ``z`` (n, d) under every value in ``theta`` (d+1, m, k)."""
    d, m, k = theta.shape[0] - 1, theta.shape[1], theta.shape[2]
    u = theta[:d].reshape(d, m * k)
    out = (z @ u).view(z.shape[0], m, k)
    off = theta[d] if shift is None else theta[d] - (shift @ u).view(m, k)
    return out + off


# ----------------------------------------------------------------------------------- L-BFGS

@dataclass
class SolveOptions:
    """Stopping rules of one value (all relative to the problem size, hence dimensionless)."""

    max_iter: int = 100  # L-BFGS iterations per value
    tol: float = 1e-6  # stop when the majorise-minimise decrease g^T M^-1 g / 2 < tol * n
    ftol: float = 1e-9  # ... or when f fell by less than ftol * n over `stall` iterations
    stall: int = 3
    settle: int = 0  # > 0: stop once validation predictions are unchanged for this many iters
    memory: int = 10  # L-BFGS pairs kept (and carried along the path)
    c1: float = 1e-4  # Armijo constant
    max_backtrack: int = 12


@dataclass
class State:
    """Iterate of ``m`` values plus the L-BFGS memory (data-gradient form, see module doc).

    ``loss``/``gl``/``curv`` are the data loss, data gradient and class curvatures at ``theta``
    (l2-free), so a warm start at another ``l2`` on the same problem needs no evaluation:
    ``f = loss + l2/2 ||U||^2``, ``g = gl + l2 U``.
    """

    theta: torch.Tensor  # (d+1, m, k)
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (s, r)
    evals: int = 0  # function+gradient evaluations (values x passes) made by the last solve
    loss: torch.Tensor | None = None  # (m,) float64
    gl: torch.Tensor | None = None  # (d+1, m, k)
    curv: torch.Tensor | None = None  # (m, k)

    def take(self, j: int, m: int = 1) -> "State":
        """A state of ``m`` values all starting from value ``j`` (weights, memory, gradient)."""
        rep = lambda t: t[:, j:j + 1].expand(-1, m, -1).contiguous()  # noqa: E731
        return State(theta=rep(self.theta), pairs=[(rep(a), rep(b)) for a, b in self.pairs],
                     loss=None if self.loss is None else self.loss[j:j + 1].expand(m).clone(),
                     gl=None if self.gl is None else rep(self.gl),
                     curv=None if self.curv is None else self.curv[j:j + 1].expand(m, -1).clone())


def zeros_state(d: int, m: int, k: int, like: torch.Tensor) -> State:
    return State(theta=torch.zeros((d + 1, m, k), dtype=like.dtype, device=like.device))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-value inner product over (d+1, k): (d+1, m, k) x2 -> (m,) float64."""
    return torch.einsum("imk,imk->m", a, b).double()


def _direction(g: torch.Tensor, pairs, h0: torch.Tensor, l2: torch.Tensor, d: int
               ) -> torch.Tensor:
    """Two-loop recursion with H_0 = gamma * diag(h0); returns the search direction -H g."""
    ys = []
    for s, r in pairs:  # secant pairs of the current objective (module doc)
        y = r.clone()
        y[:d] += l2.view(1, -1, 1) * s[:d]
        ys.append(y)
    q = g.clone()
    alphas = []
    rhos = []
    for (s, _), y in zip(reversed(pairs), reversed(ys)):
        rho = 1.0 / _dot(y, s).clamp_min(1e-300)
        a = rho * _dot(s, q)
        q -= a.to(q.dtype).view(1, -1, 1) * y
        alphas.append(a)
        rhos.append(rho)
    gamma = torch.ones(g.shape[1], dtype=torch.float64, device=g.device)
    if pairs:
        s, _ = pairs[-1]
        y = ys[-1]
        # gamma = s^T y / y^T H_0 y: the latest pair's correction of the curvature estimate
        # (about 1 when the K-FAC estimate is right; clamped against degenerate pairs).
        gamma = (_dot(s, y) / _dot(y, h0 * y).clamp_min(1e-300)).clamp(1e-3, 1e3)
    q = gamma.to(q.dtype).view(1, -1, 1) * (h0 * q)
    for (s, _), y, a, rho in zip(pairs, ys, reversed(alphas), reversed(rhos)):
        b = rho * _dot(y, q)
        q += (a - b).to(q.dtype).view(1, -1, 1) * s
    return q.neg_()


def _minv(p: Problem, l2: torch.Tensor) -> torch.Tensor:
    """Diagonal of M^-1 as (d+1, m, 1): 1/(beta s_j + l2) on weight rows, 1/(beta n) on c."""
    m = l2.shape[0]
    out = torch.empty((p.d + 1, m, 1), dtype=p.z.dtype, device=p.z.device)
    out[:p.d, :, 0] = 1.0 / (p.beta * p.diag.view(-1, 1) + l2.view(1, -1))
    out[p.d] = 1.0 / (p.beta * max(p.n, 1))
    return out


def _kfac_minv(p: Problem, l2: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """H_0 of L-BFGS as (d+1, m, k): 1/(s_j h_c / n + l2) on weight rows, 1/h_c on the bias
    (module doc). ``h`` (m, k) is floored so that a perfectly separated class keeps a finite
    bias step (the line search takes care of the rest)."""
    h = h.clamp_min(1e-6 * p.n)
    out = torch.empty((p.d + 1,) + tuple(h.shape), dtype=p.z.dtype, device=p.z.device)
    out[:p.d] = 1.0 / (p.diag.view(-1, 1, 1) * (h / p.n).view(1, *h.shape).to(p.z.dtype)
                       + l2.view(1, -1, 1))
    out[p.d] = 1.0 / h.to(p.z.dtype)
    return out


def _penalised(loss, gl, theta, l2, d):
    """Objective and gradient from the data part: f = loss + l2/2 ||U||^2, g = gl + l2 U."""
    w = theta[:d]
    f = loss + 0.5 * l2.double() * (w.double() ** 2).sum(dim=(0, 2))
    g = gl.clone()
    g[:d] += l2.view(1, -1, 1) * w
    return f, g


def solve(p: Problem, l2: torch.Tensor, st: State, opts: SolveOptions,
          on_iter: Callable[[torch.Tensor], torch.Tensor] | None = None) -> State:
    """Minimise ``m`` values from ``st`` (warm start, memory included) with preconditioned
    L-BFGS and an Armijo backtracking line search; returns the new state.

    ``st.loss``/``st.gl``/``st.curv`` must belong to ``p`` when given (they are reused, not
    recomputed).
    ``on_iter(theta)`` -> (m,) bool "settled" (e.g. validation predictions unchanged for
    ``opts.settle`` iterations); a settled or converged value stops iterating and leaves the
    batch, so it no longer costs GEMM columns.
    """
    d, m = p.d, st.theta.shape[1]
    out = State(theta=st.theta.clone(), pairs=[], evals=0)  # finished values are written here
    theta = out.theta.clone()
    pairs = list(st.pairs)  # never modified in place, so sharing with `st` is safe
    minv = _minv(p, l2)
    active = torch.arange(m, device=theta.device)
    if st.gl is not None and st.curv is not None:
        loss, gl, h = st.loss.clone(), st.gl.clone(), st.curv.clone()
    else:
        loss, gl, h = evaluate(p, theta)
        out.evals += m
    out.loss, out.gl, out.curv = loss.clone(), gl.clone(), h.clone()
    f, g = _penalised(loss, gl, theta, l2, d)
    hist = [f]
    for _ in range(opts.max_iter):
        # --- stopping: MM decrease, stalled objective, settled validation predictions
        mm = 0.5 * _dot(g, minv * g)  # (m',) lower bound on f - f*
        done = mm < opts.tol * p.n
        if len(hist) > opts.stall:
            done |= (hist[-opts.stall - 1] - hist[-1]) < opts.ftol * p.n
        if on_iter is not None:
            done |= on_iter(_full(theta, active, out.theta))[active]
        if bool(done.all()):
            break
        if bool(done.any()):  # drop finished values from the batch
            _store(out, active[done], theta[:, done], loss[done], gl[:, done], h[done])
            idx = (~done).nonzero().squeeze(1)
            active, theta, f, g, gl, loss, h = (active[idx], theta[:, idx], f[idx], g[:, idx],
                                                gl[:, idx], loss[idx], h[idx])
            pairs = [(a[:, idx], b[:, idx]) for a, b in pairs]
            minv, l2 = minv[:, idx], l2[idx]
            hist = [x[idx] for x in hist]
        # --- direction, then Armijo backtracking per value
        pdir = _direction(g, pairs, _kfac_minv(p, l2, h), l2, d)
        slope = _dot(g, pdir)  # (m',) < 0
        bad = slope >= 0  # not a descent direction (stale curvature): fall back to the MM step
        if bool(bad.any()):
            pdir[:, bad] = -(minv * g)[:, bad]
            slope = _dot(g, pdir)
        t = torch.ones_like(slope)
        new = theta + pdir
        nloss, ngl, nh = evaluate(p, new)
        out.evals += new.shape[1]
        nf, ng = _penalised(nloss, ngl, new, l2, d)
        for _ in range(opts.max_backtrack):
            fail = nf > f + opts.c1 * t * slope
            if not bool(fail.any()):
                break
            t = torch.where(fail, t * 0.3, t)
            i = fail.nonzero().squeeze(1)
            new[:, i] = theta[:, i] + t[i].to(theta.dtype).view(1, -1, 1) * pdir[:, i]
            bl, bgl, bh = evaluate(p, new[:, i])
            out.evals += i.numel()
            nloss[i], ngl[:, i], nh[i] = bl, bgl, bh
            nf, ng = _penalised(nloss, ngl, new, l2, d)
        s = new - theta
        r = ngl - gl
        curv = _dot(s, r) + l2.double() * _dot(s[:d], s[:d])
        if bool((curv > 1e-10 * _dot(s, s)).all()):
            pairs.append((s, r))
            if len(pairs) > opts.memory:
                pairs.pop(0)
        theta, f, g, gl, loss, h = new, nf, ng, ngl, nloss, nh
        hist.append(f)
    _store(out, active, theta, loss, gl, h)
    # The memory is per value; once the batch shrank it no longer lines up with all m values.
    out.pairs = pairs if active.numel() == m else []
    return out


def _store(out: State, idx, theta, loss, gl, h) -> None:
    out.theta[:, idx] = theta
    out.loss[idx] = loss
    out.gl[:, idx] = gl
    out.curv[idx] = h


def _full(theta: torch.Tensor, active: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The (d+1, m, k) parameters with the active values' current rows filled in."""
    if active.numel() == out.shape[1]:
        return theta
    full = out.clone()
    full[:, active] = theta
    return full


def objective(p: Problem, theta: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """f (m,) float64: the penalised objective of every value (tests)."""
    loss, gl, _ = evaluate(p, theta)
    return _penalised(loss, gl, theta, l2, p.d)[0]


def mm_gap(p: Problem, theta: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """g^T M^-1 g / 2 per value: a lower bound on f - f*, zero at the optimum (tests)."""
    loss, gl, _ = evaluate(p, theta)
    _, g = _penalised(loss, gl, theta, l2, p.d)
    minv = _minv(p, l2)
    return 0.5 * _dot(g, minv * g)


__all__ = ["Kernels", "FUSED", "REFERENCE", "Basis", "make_basis", "rotate", "Problem",
           "make_problem", "evaluate", "scores", "SolveOptions", "State", "zeros_state",
           "solve", "mm_gap", "objective"]
