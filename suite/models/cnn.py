"""A small CNN for 32×32 images, with the four training choices the paper studies as switches.

Layout (``w = width``, ``d = depth``; shapes for a 32×32 input)::

    stage 1: d blocks, w channels          (N, w, 32, 32)
    stage 2: d blocks, 2w channels, /2     (N, 2w, 16, 16)  ──► aux head (train mode only)
    stage 3: d blocks, 4w channels, /2     (N, 4w, 8, 8)
    global average pool ──► penultimate features (N, 4w) ──► dropout ──► linear ──► (N, classes)

A block is conv3×3-BN-ReLU; the first block of a stage changes the channel count (and strides by
2 in stages 2 and 3); the other ``d - 1`` blocks of a stage are residual (``x + block(x)``), so
deeper variants still train in a few CPU epochs.

The paper's training choices (Kornblith et al. 2019, section 4.2):

- ``bn_scale=False``: batch-norm scale γ fixed to 1 (a buffer, not a parameter; β is still
  learned). Without γ the next layer's weights absorb the scale, which the paper found hurts
  fixed-feature transfer while barely changing source accuracy.
- ``dropout``: dropout on the penultimate features before the classifier.
- ``aux_head``: an auxiliary classifier (pool + linear) on the stage-2 output, as in Inception;
  in train mode ``forward`` returns ``(logits, aux_logits)``, in eval mode only ``logits``.
- label smoothing is a loss choice and lives in the training stage.
"""

from __future__ import annotations

import torch
from torch import nn


def freeze_bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fix γ = 1 in ``bn``: the weight becomes a (persistent) buffer of ones, so it is not in
    ``parameters()`` (no gradient, no weight decay) but the state_dict keys are unchanged."""
    if not bn.affine or not isinstance(bn.weight, nn.Parameter):
        return
    ones = torch.ones_like(bn.weight.data)
    del bn.weight  # removes it from _parameters
    bn.register_buffer("weight", ones)


def freeze_all_bn_scales(model: nn.Module, what: str) -> None:
    """``freeze_bn_scale`` on every batch-norm layer of ``model``; a network without batch norm
    is a user error (``bn_scale=false`` would silently mean nothing)."""
    from suite.errors import SuiteError

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise SuiteError(f"{what} has no batch-norm layers, so bn_scale=false means nothing.",
                         "Set bn_scale to true or choose an architecture with batch norm.")
    for bn in bns:
        freeze_bn_scale(bn)


def _conv_bn_relu(c_in: int, c_out: int, stride: int, bn_scale: bool) -> nn.Sequential:
    bn = nn.BatchNorm2d(c_out)
    if not bn_scale:
        freeze_bn_scale(bn)
    # bias=False: the BN shift β plays its role.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), bn,
                         nn.ReLU(inplace=True))


class _Residual(nn.Module):
    """x + block(x) (same shape)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _stage(c_in: int, c_out: int, stride: int, depth: int, bn_scale: bool) -> nn.Sequential:
    blocks: list[nn.Module] = [_conv_bn_relu(c_in, c_out, stride, bn_scale)]
    blocks += [_Residual(_conv_bn_relu(c_out, c_out, 1, bn_scale)) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class SmallCNN(nn.Module):
    """Three-stage CNN for 32×32 inputs; see the module docstring for the layout."""

    def __init__(self, num_classes: int, width: int = 16, depth: int = 1, bn_scale: bool = True,
                 dropout: float = 0.0, aux_head: bool = False):
        super().__init__()
        if width < 1 or depth < 1 or num_classes < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"SmallCNN: bad width={width}, depth={depth}, "
                             f"num_classes={num_classes} or dropout={dropout}")
        self.num_classes = num_classes
        self.width, self.depth = width, depth
        self.bn_scale, self.aux_head = bn_scale, aux_head
        self.num_features = 4 * width
        self.stage1 = _stage(3, width, 1, depth, bn_scale)
        self.stage2 = _stage(width, 2 * width, 2, depth, bn_scale)
        self.stage3 = _stage(2 * width, 4 * width, 2, depth, bn_scale)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # Registered before `classifier` so the classifier stays the last Linear of the module.
        self.aux = (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(2 * width, num_classes)) if aux_head else None)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * width, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, _Residual):
                # Start each residual branch small so the block starts near the identity
                # (zeroing γ, the usual trick, is unavailable when γ is frozen at 1); this keeps
                # deep variants stable at lr 0.1.
                conv = m.block[0]
                with torch.no_grad():
                    conv.weight.mul_(0.1)

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mid = self.stage2(self.stage1(x))  # (N, 2w, H/2, W/2)
        feats = self.pool(self.stage3(mid)).flatten(1)  # (N, 4w)
        return feats, mid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, 4w): the globally pooled stage-3 output."""
        return self._trunk(x)[0]

    def forward(self, x: torch.Tensor):
        feats, mid = self._trunk(x)
        logits = self.classifier(self.dropout(feats))
        if self.aux is not None and self.training:
            return logits, self.aux(mid)
        return logits
