"""``timm:<name>`` architectures (optional extra): the paper's networks torchvision lacks.

timm is imported lazily, only when such a name is used; without it the user gets one clear
error with the install command.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from suite.errors import SuiteError


def require_timm():
    try:
        import timm
    except ImportError:
        raise SuiteError("This architecture comes from timm, which is not installed.",
                         "pip install 'suite[timm]' (or pip install timm).") from None
    return timm


def build(name: str, num_classes: int, *, bn_scale: bool = True, dropout: float = 0.0,
          aux_head: bool = False, weights: Any = None) -> nn.Module:
    """A timm model; ``weights`` None -> random init, anything else -> timm's pretrained
    weights (Hugging Face hub cache, downloaded if reachable)."""
    timm = require_timm()
    if aux_head:
        raise SuiteError(f"timm:{name}: auxiliary heads are not supported for timm models.",
                         "Set aux_head to false.")
    pretrained = weights not in (None, "", "none")
    if pretrained and not bn_scale:
        raise SuiteError("bn_scale=false only applies to random initialisation.",
                         "Set bn_scale to true, or build without weights.")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                  drop_rate=dropout)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise SuiteError(f"timm has no model {name!r}.",
                             "List them with timm.list_models('*pattern*').") from None
        raise
    except OSError as e:
        raise SuiteError(f"Cannot get timm's pretrained weights of {name}: {e}",
                         "Run once on a machine with internet so they land in the Hugging Face "
                         "cache (HF_HOME), copy that cache here, or pass --weights-file PATH.") \
            from None
    if not bn_scale:
        from suite.models.cnn import freeze_all_bn_scales

        freeze_all_bn_scales(model, f"timm:{name}")
    return model


def preprocessing(name: str) -> tuple[Callable, int]:
    """timm's own eval transform for ``name`` and its input side."""
    timm = require_timm()
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(name, pretrained=False)
    cfg = resolve_data_config({}, model=model)
    return create_transform(**cfg, is_training=False), int(cfg["input_size"][-1])
