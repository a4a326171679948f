"""Training pieces shared by ``pretrain`` and ``finetune``: optimiser, schedule, steps, evaluation.

Plain functions, no trainer class: a stage builds a model, an optimiser (:func:`make_optimizer`),
a schedule (:func:`cosine_schedule`), an endless batch iterator (:func:`cycle_batches`), and calls
:func:`train_steps`, which calls back ``on_eval(step)`` for learning curves. :func:`evaluate`
scores a model on a dataset with the dataset's metric (percent, via :func:`suite.metrics.score`).

Everything is deterministic under a seed: weight initialisation follows ``torch.manual_seed`` (the
caller seeds before building), and batch order follows the seed given to
:func:`cycle_batches` (epoch ``e`` is shuffled with ``seed + e``).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from suite import metrics
from suite.errors import SuiteError

NESTEROV_MOMENTUM = 0.9  # the paper's fine-tuning optimiser: SGD with Nesterov momentum 0.9
AUX_WEIGHT = 0.4  # auxiliary-head loss weight (Inception's 0.4; the paper's "aux head" choice)
WARMUP_FRACTION = 0.05  # linear warmup over the first 5% of steps (at least one step)


def channels_last(device: torch.device) -> bool:
    """Use NHWC activations on CPU: oneDNN's convolutions run about 15% faster on them for the
    small CNNs of the built-in study (measured on 2 AVX2 cores); GPUs keep torch's default."""
    return torch.device(device).type == "cpu"


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` (NHWC weights on CPU, see :func:`channels_last`)."""
    if channels_last(device):
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


def _inputs(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` in the memory format :func:`to_device` gave the model."""
    if x.ndim == 4 and channels_last(device):
        return x.to(device, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum 0.9; weight decay on weight matrices/kernels only.

    Biases and batch-norm parameters (every parameter with ``ndim <= 1``) get no decay: decaying
    BN's γ/β only fights the normalisation and is the common practice (torchvision references,
    ``--norm-weight-decay 0``).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, lr=lr, momentum=NESTEROV_MOMENTUM, nesterov=True)


def warmup_steps_for(total_steps: int) -> int:
    return max(1, int(round(WARMUP_FRACTION * total_steps)))


def cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier at optimisation step ``step`` (0-based; the LR used BY that step).

    Linear warmup  (step + 1) / warmup  for step < warmup, then cosine decay to 0 at
    ``total_steps``:  0.5 * (1 + cos(pi * (step - warmup) / (total - warmup))).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule (call ``scheduler.step()`` after each ``optimizer.step()``)."""
    w = warmup_steps_for(total_steps) if warmup_steps is None else warmup_steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_factor(s, total_steps, w))


def cycle_batches(dataset, batch_size: int, *, seed: int = 0, num_workers: int = -1,
                  start_epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled training batches, epoch ``e`` shuffled with ``seed + e``.

    Incomplete last batches are dropped (a batch of one breaks batch-norm's training statistics);
    a dataset smaller than ``batch_size`` yields one full-dataset batch per epoch instead.
    """
    from suite.data import make_loader

    n = len(dataset)
    if n < 2:
        raise SuiteError(f"The training split has {n} example(s); training needs at least 2.",
                         "Use a dataset with more training images.")
    bs = min(batch_size, n)
    epoch = start_epoch
    while True:
        loader = make_loader(dataset, bs, shuffle=True, seed=seed + epoch,
                             num_workers=num_workers, drop_last=True)
        yield from loader
        epoch += 1


def steps_per_epoch(dataset, batch_size: int) -> int:
    """Batches per epoch of :func:`cycle_batches` (incomplete batch dropped)."""
    n = len(dataset)
    return max(1, n // min(batch_size, max(n, 1)))


def compute_loss(outputs, targets: torch.Tensor, *, label_smoothing: float = 0.0,
                 aux_weight: float = AUX_WEIGHT, multilabel: bool = False) -> torch.Tensor:
    """Loss of ``outputs`` = logits (n, k) or (logits, aux_logits), each (n, k).

    Single-label: cross-entropy with label smoothing ε (target 1-ε+ε/k on the true class, ε/k
    elsewhere). Multi-label (targets (n, k) of 0/1): mean binary cross-entropy on each logit, with
    targets smoothed to y(1-ε) + ε/2. With an auxiliary head the loss is
    main + aux_weight * aux (both with the same smoothing).
    """
    if isinstance(outputs, (tuple, list)):
        logits, aux = outputs[0], (outputs[1] if len(outputs) > 1 else None)
    else:
        logits, aux = outputs, None
    if multilabel:
        t = targets.to(logits.dtype)
        if label_smoothing:
            t = t * (1.0 - label_smoothing) + 0.5 * label_smoothing

        def one(z):
            return nn.functional.binary_cross_entropy_with_logits(z, t)
    else:
        def one(z):
            return nn.functional.cross_entropy(z, targets, label_smoothing=label_smoothing)
    loss = one(logits)
    if aux is not None and aux_weight:
        loss = loss + aux_weight * one(aux)
    return loss


def is_multilabel_target(y: torch.Tensor) -> bool:
    """Multi-label targets are float (n, k) 0/1 matrices; single-label are int (n,)."""
    return y.ndim == 2 and y.is_floating_point()


def train_steps(model: nn.Module, loader_iter: Iterator, steps: int,
                optimizer: torch.optim.Optimizer, scheduler=None, *, device: torch.device,
                label_smoothing: float = 0.0, aux_weight: float = AUX_WEIGHT,
                multilabel: bool = False, on_eval: Callable[[int], None] | None = None,
                eval_every: int = 0, on_step: Callable[[], None] | None = None) -> float:
    """Run ``steps`` optimisation steps on batches drawn from ``loader_iter``.

    ``on_eval(step)`` is called before training (step 0), after every ``eval_every`` steps and
    after the last step (never twice for one step); the model is put back in train mode after
    it. ``on_step()`` is called after every step (progress bars). Multi-label BCE is used when
    ``multilabel`` is set or the targets are float (n, k) matrices. Returns the mean training
    loss over the steps (nan for ``steps == 0`` or a diverged run).
    """
    model.train()
    if on_eval is not None:
        on_eval(0)
        model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)  # summed on-device: no sync/step
    for step in range(1, steps + 1):
        x, y = next(loader_iter)
        x = _inputs(x, device)
        y = y.to(device, non_blocking=True)
        out = model(x)
        loss = compute_loss(out, y, label_smoothing=label_smoothing, aux_weight=aux_weight,
                            multilabel=multilabel or is_multilabel_target(y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach()
        if on_step is not None:
            on_step()
        if on_eval is not None and ((eval_every and step % eval_every == 0) or step == steps):
            on_eval(step)
            model.train()
    # A diverged point (nan loss) is not an error: it scores at chance and loses the selection.
    mean = float(total) / steps if steps else float("nan")
    return mean


@torch.inference_mode()
def predict(model: nn.Module, loader: Iterable,
            device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, k) float32 and targets (n,) or (n, k) of a whole loader, in eval mode."""
    was_training = model.training
    model.eval()
    scores, ys = [], []
    for x, y in loader:
        out = model(_inputs(x, device))
        if isinstance(out, (tuple, list)):  # a model that returns aux logits in eval too
            out = out[0]
        scores.append(out.float().cpu())
        ys.append(torch.as_tensor(y))
    model.train(was_training)
    if not scores:
        raise SuiteError("An evaluation split is empty.", "Use a dataset with test/val images.")
    return torch.cat(scores).numpy(), torch.cat(ys).numpy()


def evaluate(model: nn.Module, loader: Iterable, metric: str, device: torch.device) -> float:
    """The dataset's metric (``top1`` | ``mean_per_class`` | ``map11``) in percent."""
    scores, y = predict(model, loader, device)
    return metrics.score(metric, scores, y)


def eval_loader(dataset, batch_size: int = 256, num_workers: int = -1):
    """A deterministic (unshuffled) loader for evaluation."""
    from suite.data import make_loader

    return make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers)


__all__ = ["to_device", "make_optimizer", "cosine_schedule", "cosine_factor", "warmup_steps_for",
           "cycle_batches", "steps_per_epoch", "compute_loss", "train_steps", "predict",
           "evaluate", "eval_loader", "AUX_WEIGHT", "NESTEROV_MOMENTUM"]
