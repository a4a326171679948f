"""suite.train: optimiser groups, schedule, losses against references, the step loop, evaluate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from suite import metrics
from suite.train import (AUX_WEIGHT, compute_loss, cosine_factor, cosine_schedule, evaluate,
                         make_optimizer, train_steps)

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n=128, k=3, d=8, seed=0):
    """k well-separated Gaussian blobs in d dimensions: (x (n, d), y (n,))."""
    g = torch.Generator().manual_seed(seed)
    centers = 4.0 * torch.randn(k, d, generator=g)
    y = torch.arange(n) % k
    x = centers[y] + 0.3 * torch.randn(n, d, generator=g)
    return x, y


def _batches(x, y, batch, seed=0):
    """Endless seeded shuffled batches (what cycle_batches yields, without the data module)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i:i + batch]
            yield x[idx], y[idx]


class _Mlp(nn.Module):
    """Tiny net with BN and an optional aux head (returns (logits, aux) in train mode)."""

    def __init__(self, d=8, k=3, aux=False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, k)
        self.aux = nn.Linear(16, k) if aux else None

    def forward(self, x):
        h = self.body(x)
        if self.aux is not None and self.training:
            return self.head(h), self.aux(h)
        return self.head(h)


def _full_loss(model, x, y, **kw):
    model.eval()
    with torch.no_grad():
        return float(compute_loss(model(x), y, **kw))


def test_optimizer_decays_only_weight_matrices():
    model = _Mlp()
    opt = make_optimizer(model, lr=0.1, weight_decay=1e-3)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1), name  # no decay on biases and BN γ/β
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == len(list(model.parameters()))


def test_cosine_schedule_matches_formula():
    total, warm = 20, 4
    ref = [(s + 1) / warm if s < warm else
           0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))) for s in range(total)]
    assert [cosine_factor(s, total, warm) for s in range(total)] == pytest.approx(ref)
    model = nn.Linear(2, 2)
    opt = make_optimizer(model, lr=0.5, weight_decay=0.0)
    sched = cosine_schedule(opt, total, warm)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5 * r for r in ref])
    assert max(seen) == pytest.approx(0.5) and seen[-1] < 0.01


def test_label_smoothing_loss_matches_reference():
    g = torch.Generator().manual_seed(1)
    z, y, eps = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 3, 4, 0]), 0.1
    logp = torch.log_softmax(z, 1)
    # Smoothed target: (1 - ε) one-hot + ε / k uniform.
    target = (1 - eps) * nn.functional.one_hot(y, 5) + eps / 5
    ref = -(target * logp).sum(1).mean()
    assert float(compute_loss(z, y, label_smoothing=eps)) == pytest.approx(float(ref), rel=1e-6)


def test_aux_head_loss_is_weighted_sum():
    g = torch.Generator().manual_seed(2)
    z, a = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    y = torch.tensor([0, 1, 2, 1])
    ce = nn.functional.cross_entropy
    got = float(compute_loss((z, a), y))
    assert got == pytest.approx(float(ce(z, y) + AUX_WEIGHT * ce(a, y)), rel=1e-6)
    assert float(compute_loss((z, a), y, aux_weight=0.0)) == pytest.approx(float(ce(z, y)))


def test_multilabel_loss_is_bce_with_smoothing():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(5, 4, generator=g)
    t = (torch.rand(5, 4, generator=g) > 0.5).float()
    p = torch.sigmoid(z)
    for eps in (0.0, 0.2):
        ts = t * (1 - eps) + eps / 2
        ref = -(ts * torch.log(p) + (1 - ts) * torch.log(1 - p)).mean()
        got = compute_loss(z, t, multilabel=True, label_smoothing=eps)
        assert float(got) == pytest.approx(float(ref), rel=1e-5)


def test_train_steps_lowers_loss_and_calls_eval_on_schedule():
    torch.manual_seed(0)
    x, y = _blobs()
    model = _Mlp()
    before = _full_loss(model, x, y)
    opt = make_optimizer(model, lr=0.1, weight_decay=1e-4)
    steps = 30
    calls = []
    mean = train_steps(model, _batches(x, y, 32), steps, opt, cosine_schedule(opt, steps),
                       device=CPU, on_eval=lambda s: calls.append(s), eval_every=12)
    assert calls == [0, 12, 24, 30]  # before training, every 12 steps, and after the last
    assert model.training  # put back in train mode after each evaluation
    after = _full_loss(model, x, y)
    assert after < 0.25 * before and math.isfinite(mean)
    assert evaluate(model, [(x, y)], "top1", CPU) == 100.0


def test_train_steps_aux_and_label_smoothing_paths():
    torch.manual_seed(0)
    x, y = _blobs(seed=4)
    model = _Mlp(aux=True)
    before = _full_loss(model, x, y)
    opt = make_optimizer(model, lr=0.1, weight_decay=0.0)
    train_steps(model, _batches(x, y, 32), 30, opt, cosine_schedule(opt, 30), device=CPU,
                label_smoothing=0.1)
    assert model.aux.weight.grad is not None  # the auxiliary head was trained
    assert _full_loss(model, x, y) < 0.5 * before
    assert evaluate(model, [(x, y)], "top1", CPU) == 100.0


def test_train_steps_multilabel_path():
    torch.manual_seed(0)
    x, y = _blobs(k=4, seed=5)
    # Two labels per example: its blob and the next one (float (n, k) 0/1 -> BCE automatically).
    t = nn.functional.one_hot(y, 4).float() + nn.functional.one_hot((y + 1) % 4, 4).float()
    model = _Mlp(k=4)
    before = _full_loss(model, x, t, multilabel=True)
    opt = make_optimizer(model, lr=0.1, weight_decay=0.0)
    train_steps(model, _batches(x, t, 32), 40, opt, cosine_schedule(opt, 40), device=CPU)
    assert _full_loss(model, x, t, multilabel=True) < 0.5 * before
    assert evaluate(model, [(x, t)], "map11", CPU) == pytest.approx(100.0)


def test_train_steps_is_deterministic_under_a_seed():
    x, y = _blobs()

    def run():
        torch.manual_seed(7)
        model = _Mlp()
        opt = make_optimizer(model, lr=0.05, weight_decay=1e-4)
        train_steps(model, _batches(x, y, 16, seed=3), 10, opt, cosine_schedule(opt, 10),
                    device=CPU)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(), run())


def test_evaluate_matches_metrics_score():
    torch.manual_seed(0)
    x, y = _blobs(n=60)
    model = _Mlp()  # untrained: some mistakes
    model.eval()
    with torch.no_grad():
        scores = model(x).numpy()
    model.train()
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 60, 16)]
    for metric in ("top1", "mean_per_class"):
        assert evaluate(model, batches, metric, CPU) == pytest.approx(
            metrics.score(metric, scores, y.numpy()))
    assert model.training  # evaluate restores the mode it found


def test_diverged_training_reports_nan_instead_of_raising():
    x, y = _blobs()
    model = _Mlp()
    opt = make_optimizer(model, lr=1e12, weight_decay=0.0)
    out = train_steps(model, _batches(x * 1e6, y, 32), 20, opt, None, device=CPU)
    assert not np.isfinite(out)  # a diverged grid point loses the selection; it is no error
