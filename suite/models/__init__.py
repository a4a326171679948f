"""Networks: build them, cut them at the penultimate layer, swap their classifier, log them.

Architectures are ``"cnn"`` (:class:`suite.models.cnn.SmallCNN`, for the fast synthetic study),
any torchvision classification architecture (``torchvision.models.list_models``), or
``"timm:<name>"`` when the optional ``timm`` extra is installed (the paper's architectures that
torchvision lacks, see :mod:`suite.models.zoo`), or ``"py:MODULE:FACTORY"``, a network of the
user's own built by an importable factory (:mod:`suite.models.byo`).

The four training choices of the paper map onto torchvision networks where they mean something:

- ``bn_scale=False`` fixes every batch-norm γ at 1 (random init only: a pretrained γ cannot be
  un-learned); networks without batch norm (ViT, Swin, ConvNeXt, VGG without ``_bn``, ...) refuse.
- ``dropout`` is the dropout right before the final classifier: an existing one is set to ``p``
  (MobileNet, EfficientNet, Inception, ...), otherwise one is inserted when ``p > 0``. Other
  dropouts inside the network (VGG's hidden layers) keep their defaults.
- ``aux_head`` is Inception v3's auxiliary classifier (``inception_v3`` only; GoogLeNet's two aux
  heads return a 3-tuple and are refused).

Input normalisation follows the network, not the dataset: a registered version records the
per-channel statistics it was trained on (tags ``input_mean`` / ``input_std``; older versions:
:func:`input_normalisation` infers them as pretraining did), and every consumer re-normalises to
them (:func:`suite.features.input_plan`). The synthetic sets are generated normalised with
``suite.data.synthetic.MEAN/STD``, which is what a SmallCNN pretrained on ``synth-source`` has
seen; an ImageNet checkpoint on those images gets them re-normalised to ImageNet's statistics
(:class:`Renormalise`), and a SmallCNN on decoded on-disk images gets the synthetic statistics.

Registered checkpoints are logged with MLflow's ``pickle`` serialization, not the default ``pt2``
(``torch.export``) format: ``pt2`` loads back as a traced graph without the module structure, so
the classifier could no longer be found and replaced, train/eval behaviour (aux head, dropout,
batch-norm statistics) is frozen at export time, and exporting large networks takes minutes.
Pickle round-trips the exact ``nn.Module`` in about a second; loading it needs ``suite`` (and, for
``timm:`` models, ``timm``) importable.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from suite.errors import SuiteError
from suite.models import byo
from suite.models.byo import PY_PREFIX
from suite.models.cnn import SmallCNN, freeze_all_bn_scales

CNN = "cnn"
TIMM_PREFIX = "timm:"
CNN_IMAGE_SIZE = 32  # SmallCNN's native input side (the synthetic datasets' size)
ARTIFACT_PATH = "model"  # name of the logged MLflow model inside its run

# ImageNet normalisation: what a SmallCNN pretrained on an on-disk source is trained with (its
# default preprocessing); a SmallCNN pretrained on the synthetic source sees synthetic.MEAN/STD.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Version tags with the per-channel statistics a network was trained on ("0.485,0.456,0.406").
VTAG_INPUT_MEAN = "input_mean"
VTAG_INPUT_STD = "input_std"

__all__ = [
    "CNN",
    "Renormalise",
    "SmallCNN",
    "architecture_from_version",
    "architecture_spec",
    "architectures",
    "build_model",
    "drop_aux_head",
    "feature_extractor",
    "head_path",
    "input_normalisation",
    "input_side",
    "log_and_register_model",
    "make_renormalise",
    "model_from_version",
    "normalisation_of",
    "preprocessing",
    "replace_head",
    "resolve_weights",
    "set_dropout",
    "version_preprocessing",
    "weights_cache_path",
    "with_normalisation",
]


# ---------------------------------------------------------------------------------------------
# architecture names and weights


@functools.lru_cache(maxsize=1)
def torchvision_architectures() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def architectures() -> list[str]:
    """Every architecture name :func:`build_model` accepts (besides ``timm:<name>``)."""
    return [CNN, *torchvision_architectures()]


def check_arch(arch: str) -> None:
    """Raise SuiteError for an unknown architecture, naming the closest known ones (a
    ``py:`` factory is imported to check it)."""
    if arch == CNN or arch in torchvision_architectures() or arch.startswith(TIMM_PREFIX):
        return
    if arch.startswith(PY_PREFIX):
        byo.check(arch)
        return
    close = difflib.get_close_matches(arch, architectures(), n=5, cutoff=0.5)
    hint = f"Did you mean {', '.join(close)}? " if close else ""
    raise SuiteError(
        f"Unknown architecture {arch!r}.",
        f"{hint}Use 'cnn', a torchvision classification model "
        "(`suite zoo list` shows them), 'timm:<name>' with the timm extra installed, or "
        "'py:MODULE:FACTORY' for a network of your own.",
    )


def resolve_weights(arch: str, weights: Any):
    """``None``/"none" -> None; "DEFAULT", a member name ("IMAGENET1K_V1"), a full id
    ("ResNet50_Weights.IMAGENET1K_V1") or a WeightsEnum -> that torchvision WeightsEnum."""
    import torchvision

    if weights is None or (isinstance(weights, str) and weights.lower() in ("", "none")):
        return None
    enum_cls = torchvision.models.get_model_weights(arch)
    if isinstance(weights, enum_cls):
        return weights
    key = str(weights).split(".")[-1]
    if key.upper() == "DEFAULT":
        return enum_cls.DEFAULT
    try:
        return enum_cls[key]
    except KeyError:
        names = ", ".join(m.name for m in enum_cls)
        raise SuiteError(f"{arch} has no weights {weights!r}.",
                         f"Choose one of: DEFAULT, {names}.") from None


def weights_id(weights) -> str:
    """"ResNet50_Weights.IMAGENET1K_V2" for a torchvision WeightsEnum member."""
    return f"{type(weights).__name__}.{weights.name}"


def weights_cache_path(weights) -> Path:
    """Where torchvision looks for (and downloads) a WeightsEnum's file: the torch hub cache."""
    filename = os.path.basename(urllib.parse.urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _weights_unavailable(arch: str, weights, err: BaseException) -> SuiteError:
    path = weights_cache_path(weights)
    return SuiteError(
        f"Cannot get the ImageNet weights {weights_id(weights)} of {arch}: they are not in the "
        f"torch hub cache and downloading {weights.url} failed ({type(err).__name__}: {err}).",
        f"On a machine with internet, download that file and copy it to {path} (the folder is "
        "torch.hub.get_dir()/checkpoints, set by TORCH_HOME), or pass --weights-file PATH.",
    )


# ---------------------------------------------------------------------------------------------
# building


def build_model(arch: str, num_classes: int, *, width: int = 16, depth: int = 1,
                bn_scale: bool = True, dropout: float = 0.0, aux_head: bool = False,
                weights: Any = None) -> nn.Module:
    """A network for ``num_classes`` classes (see the module docstring for the choices).

    ``weights`` (torchvision archs): None (random init), "DEFAULT" or a weights id; the ImageNet
    classifier is replaced by a fresh one when ``num_classes != 1000``. ``width``/``depth`` only
    apply to ``cnn``. Train mode may return ``(logits, aux_logits)`` when ``aux_head``.
    """
    check_arch(arch)
    if not 0.0 <= dropout < 1.0:
        raise SuiteError(f"dropout must be in [0, 1), got {dropout}.", "Fix the model config.")
    if arch == CNN:
        if weights not in (None, "", "none"):
            raise SuiteError("The 'cnn' architecture has no pretrained weights.",
                             "Pretrain it with `suite pretrain` (weights=None).")
        return SmallCNN(num_classes, width=width, depth=depth, bn_scale=bn_scale,
                        dropout=dropout, aux_head=aux_head)
    if arch.startswith(TIMM_PREFIX):
        from suite.models import timm_models

        return timm_models.build(arch[len(TIMM_PREFIX):], num_classes, bn_scale=bn_scale,
                                 dropout=dropout, aux_head=aux_head, weights=weights)
    if arch.startswith(PY_PREFIX):
        return _build_py(arch, num_classes, bn_scale=bn_scale, dropout=dropout,
                         aux_head=aux_head, weights=weights)
    return _build_torchvision(arch, num_classes, bn_scale=bn_scale, dropout=dropout,
                              aux_head=aux_head, weights=weights)


def _build_torchvision(arch: str, num_classes: int, *, bn_scale: bool, dropout: float | None,
                       aux_head: bool, weights: Any,
                       state_dict_loader: Callable[[], dict] | None = None) -> nn.Module:
    import torchvision

    w = resolve_weights(arch, weights)
    kwargs: dict[str, Any] = {}
    if arch in ("inception_v3", "googlenet"):
        if aux_head and arch == "googlenet":
            raise SuiteError("googlenet's auxiliary heads (two, returning a 3-tuple) are not "
                             "supported.", "Use aux_head with inception_v3 or cnn.")
        if w is None:
            # Without weights torchvision turns aux heads on by default; make the choice
            # explicit. With weights its builders insist on building them (the checkpoints
            # hold them) and reject aux_logits=False: they are dropped after loading instead.
            kwargs["aux_logits"] = aux_head
            kwargs["init_weights"] = True
    elif aux_head:
        raise SuiteError(f"{arch} has no auxiliary classifier.",
                         "Use aux_head with inception_v3 or cnn, or set aux_head to false.")
    if not bn_scale and w is not None:
        raise SuiteError("bn_scale=false (γ fixed at 1) only applies to random initialisation: "
                         "pretrained weights already contain learned γ.",
                         "Set bn_scale to true, or build without weights.")
    if w is None:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes,
                                             **kwargs)
    else:
        model = _build_pretrained(arch, w, kwargs, state_dict_loader)
        if not aux_head:
            _drop_aux_heads(model)
    if not bn_scale:
        freeze_all_bn_scales(model, arch)
    if w is not None and num_classes != len(w.meta["categories"]):
        replace_head(model, num_classes)
    if dropout is not None:  # None: keep the architecture's own (ImageNet checkpoints)
        set_dropout(model, dropout)
    return model


def _build_py(arch: str, num_classes: int, *, bn_scale: bool, dropout: float, aux_head: bool,
              weights: Any) -> nn.Module:
    """A ``py:`` factory's network at random init (:mod:`suite.models.byo`) with a classifier
    for ``num_classes``; its weights come from ``suite zoo register --weights-file``."""
    if weights not in (None, "", "none"):
        raise SuiteError(f"{arch}: a factory's network has no named weights.",
                         "Register its state dict with `suite zoo register ARCH --weights-file "
                         "F --source-top1 X` (or weights_file: in the study config).")
    if aux_head:
        raise SuiteError(f"{arch}: aux_head is not supported for a factory's network.",
                         "Set aux_head to false.")
    built = byo.build(arch)
    model = built.model
    if built.feature_layer:
        setattr(model, byo.FEATURE_LAYER_ATTR, built.feature_layer)
    if not bn_scale:
        freeze_all_bn_scales(model, arch)
    if _classes(model.get_submodule(head_path(model))) != num_classes:
        replace_head(model, num_classes)
    if dropout:
        set_dropout(model, dropout)
    return model


def _drop_aux_heads(model: nn.Module) -> None:
    """Remove the auxiliary classifiers of a pretrained googlenet / inception_v3 (what
    torchvision's builders do when asked for ``aux_logits=False``)."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, name):
                setattr(model, name, None)


def drop_aux_head(model: nn.Module) -> nn.Module:
    """Remove ``model``'s auxiliary classifier(s) in place (SmallCNN's ``aux``, Inception v3's
    ``AuxLogits``, GoogLeNet's ``aux1``/``aux2``), so that train mode returns the logits only.
    Returns ``model``."""
    if isinstance(model, SmallCNN):
        model.aux, model.aux_head = None, False
    else:
        _drop_aux_heads(model)
    return model


def _build_pretrained(arch: str, w, kwargs: dict, state_dict_loader) -> nn.Module:
    """torchvision's builder with weights; ``state_dict_loader`` (a user's file) stands in for
    the download so architecture-specific loading (key renames, aux-head removal) still runs."""
    import torchvision
    import torchvision.models._api as tv_api

    if state_dict_loader is None:
        try:
            return torchvision.models.get_model(arch, weights=w, **kwargs)
        except Exception as e:
            if weights_cache_path(w).exists():
                raise
            raise _weights_unavailable(arch, w, e) from None

    # WeightsEnum.get_state_dict calls the name `load_state_dict_from_url` bound in
    # torchvision.models._api; substitute the user's state dict for the duration of the build.
    original = tv_api.load_state_dict_from_url
    tv_api.load_state_dict_from_url = lambda *a, **k: state_dict_loader()
    try:
        return torchvision.models.get_model(arch, weights=w, **kwargs)
    finally:
        tv_api.load_state_dict_from_url = original


# ---------------------------------------------------------------------------------------------
# classifier surgery


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and hasattr(model, "reset_classifier")


def head_path(model: nn.Module) -> str:
    """Dotted name of the final classifier: the last ``nn.Linear`` registered outside auxiliary
    heads (``fc`` for ResNet/RegNet/Inception, ``classifier.N`` for MobileNet/VGG/DenseNet/...,
    ``heads.head`` for ViT, ``head`` for Swin). SqueezeNet's 1×1-conv classifier is
    ``classifier.1``."""
    if isinstance(model, SmallCNN):
        return "classifier"
    if type(model).__name__ == "SqueezeNet":
        return "classifier.1"
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and "aux" not in name.lower():
            last = name
    if last is None:
        raise SuiteError(f"Cannot find the classifier (a final nn.Linear) of a "
                         f"{type(model).__name__}.",
                         "Use 'cnn' or a torchvision classification architecture.")
    return last


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)  # Sequential children are attributes named "0", "1", ...


def set_dropout(model: nn.Module, p: float) -> None:
    """Set the dropout right before the final classifier to ``p`` (insert one if absent)."""
    if isinstance(model, SmallCNN):
        model.dropout.p = p
        return
    if _is_timm(model):
        if hasattr(model, "drop_rate"):
            model.drop_rate = p
        return
    path = head_path(model)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, nn.Sequential):
        children = list(parent.children())
        i = list(parent._modules).index(attr)  # children may be named ("heads.head" in ViT)
        if i > 0 and isinstance(children[i - 1], nn.Dropout):
            children[i - 1].p = p
            return
    elif isinstance(getattr(parent, "dropout", None), nn.Dropout):
        parent.dropout.p = p  # Inception v3, GoogLeNet: self.dropout before self.fc
        return
    if p > 0:
        _set_module(model, path, nn.Sequential(nn.Dropout(p), model.get_submodule(path)))


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give ``model`` (in place) a freshly initialised classifier for ``num_classes`` classes;
    auxiliary heads are re-initialised for ``num_classes`` too. Returns ``model``."""
    if _is_timm(model):
        model.reset_classifier(num_classes)
        return model
    path = head_path(model)
    old = model.get_submodule(path)
    if isinstance(old, nn.Conv2d):  # SqueezeNet: 1×1 conv classifier, torchvision's init
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
        nn.init.normal_(new.weight, mean=0.0, std=0.01)
        nn.init.zeros_(new.bias)
    else:
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    _set_module(model, path, new.to(old.weight.device))
    for name, m in list(model.named_modules()):
        if "aux" in name.lower() and isinstance(m, nn.Linear) and m.out_features == _classes(old):
            _set_module(model, name, nn.Linear(m.in_features, num_classes,
                                               bias=m.bias is not None).to(m.weight.device))
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return model


def _classes(head: nn.Module) -> int:
    return head.out_channels if isinstance(head, nn.Conv2d) else head.out_features


class _TimmFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def feature_extractor(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) mapping images (N, 3, H, W) to penultimate features (N, D):
    the input of the final classifier, i.e. after global pooling (and the classifier's own
    layers before its last Linear, e.g. MobileNetV3's hidden layer, MaxViT's pre-logits)."""
    m = copy.deepcopy(model)
    if _is_timm(m):
        return _TimmFeatures(m).eval()
    layer = getattr(m, byo.FEATURE_LAYER_ATTR, "")
    if layer:  # a py: network registered with its penultimate layer named
        for p in m.parameters():
            p.requires_grad_(False)
        return byo.LayerFeatures(m, layer).eval()
    path = head_path(m)
    if isinstance(m.get_submodule(path), nn.Conv2d):
        # SqueezeNet: classifier = (dropout, conv1x1, relu, avgpool), then flatten; its
        # penultimate features are the pooled 512-channel map: (N, 512).
        m.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1))
    else:
        _set_module(m, path, nn.Identity())
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()


# ---------------------------------------------------------------------------------------------
# preprocessing


class SmallImageTransform:
    """SmallCNN preprocessing: identity for tensors (the synthetic sets are generated
    normalised at 32×32); PIL images are resized (shorter side), centre-cropped to ``size``,
    converted and normalised with ``mean`` / ``std`` (ImageNet's by default: the pipeline of a
    SmallCNN pretrained on an on-disk source; :func:`with_normalisation` gives a network its
    own statistics)."""

    def __init__(self, size: int = CNN_IMAGE_SIZE, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):
        self.size = size
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img):
        if isinstance(img, torch.Tensor):
            return img
        from torchvision.transforms import functional as F

        img = F.center_crop(F.resize(img, self.size), self.size)
        return F.normalize(F.to_tensor(img.convert("RGB")), list(self.mean), list(self.std))

    def __repr__(self) -> str:
        return f"SmallImageTransform(size={self.size}, mean={self.mean}, std={self.std})"


class Renormalise:
    """Map images normalised with (``src_mean``, ``src_std``) to (``dst_mean``, ``dst_std``):
    per channel  x' = (x * s_src + m_src - m_dst) / s_dst = a x + b,  with  a = s_src / s_dst
    and  b = (m_src - m_dst) / s_dst.  Accepts (3, H, W) and (N, 3, H, W) tensors. Being affine
    per channel, it commutes with the resize the synthetic images get on the device
    (antialiased bilinear: each output pixel a weighted mean of inputs, weights summing to 1),
    so the order of the two does not matter."""

    def __init__(self, src_mean, src_std, dst_mean, dst_std):
        self.src = (_floats(src_mean), _floats(src_std))
        self.dst = (_floats(dst_mean), _floats(dst_std))
        ms, ss = (torch.tensor(v) for v in self.src)
        md, sd = (torch.tensor(v) for v in self.dst)
        self.scale = (ss / sd).view(-1, 1, 1)  # (3, 1, 1): broadcasts over (N,) 3, H, W
        self.shift = ((ms - md) / sd).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def __repr__(self) -> str:
        return (f"Renormalise(from mean={self.src[0]}, std={self.src[1]} "
                f"to mean={self.dst[0]}, std={self.dst[1]})")


def make_renormalise(src_mean, src_std, dst_mean, dst_std) -> Renormalise | None:
    """:class:`Renormalise` from the first statistics to the second; None when they agree."""
    if (_floats(src_mean), _floats(src_std)) == (_floats(dst_mean), _floats(dst_std)):
        return None
    return Renormalise(src_mean, src_std, dst_mean, dst_std)


def preprocessing(arch: str, weights: Any = None) -> tuple[Callable, int]:
    """(transform for one decoded image, input side in pixels) of an architecture: the
    weights' own transforms (resize, centre-crop, normalise) for torchvision; without weights
    the architecture's default weights' transforms (the resolution it was designed for)."""
    check_arch(arch)
    if arch == CNN:
        return SmallImageTransform(), CNN_IMAGE_SIZE
    if arch.startswith(TIMM_PREFIX):
        from suite.models import timm_models

        return timm_models.preprocessing(arch[len(TIMM_PREFIX):])
    if arch.startswith(PY_PREFIX):  # ImageNet's defaults; a registered version has its own
        return byo.make_transform(byo.DEFAULTS), byo.DEFAULTS.input_size
    import torchvision

    w = resolve_weights(arch, weights) or torchvision.models.get_model_weights(arch).DEFAULT
    transform = w.transforms()
    return transform, int(transform.crop_size[0])


def _floats(v) -> tuple[float, ...]:
    """A normalisation vector as a tuple of floats rounded to 6 digits (tags round-trip it)."""
    if isinstance(v, torch.Tensor):
        v = v.flatten().tolist()
    if isinstance(v, str):
        v = v.split(",")
    return tuple(round(float(x), 6) for x in v)


def normalisation_of(transform) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a preprocessing transform normalises with: torchvision's
    ``ImageClassification`` preset, :class:`SmallImageTransform`, or a ``Compose`` holding a
    ``Normalize`` (timm's evaluation transform)."""
    for t in [transform, *getattr(transform, "transforms", [])]:
        if hasattr(t, "mean") and hasattr(t, "std"):
            return _floats(t.mean), _floats(t.std)
    raise SuiteError(f"Cannot tell which normalisation {transform!r} applies.",
                     "Use a torchvision, timm or cnn architecture.")


def with_normalisation(transform, side: int, mean, std):
    """``transform`` (from :func:`preprocessing`) cropping to ``side`` and normalising with
    (``mean``, ``std``); returned unchanged when it already does."""
    mean, std = _floats(mean), _floats(std)
    if isinstance(transform, SmallImageTransform):
        if (transform.size, transform.mean, transform.std) == (side, mean, std):
            return transform
        return SmallImageTransform(side, mean, std)
    if hasattr(transform, "crop_size"):  # torchvision's ImageClassification preset
        from torchvision.transforms._presets import ImageClassification

        same_side = int(transform.crop_size[0]) == side
        if same_side and normalisation_of(transform) == (mean, std):
            return transform
        # A network registered at another side keeps torchvision's 256/224 resize ratio.
        resize = int(transform.resize_size[0]) if same_side else round(side * 256 / 224)
        return ImageClassification(crop_size=side, resize_size=resize, mean=mean, std=std,
                                   interpolation=transform.interpolation,
                                   antialias=transform.antialias)
    steps = list(getattr(transform, "transforms", []))
    for i, t in enumerate(steps):  # timm: Compose([resize, crop, to-tensor, Normalize])
        if hasattr(t, "mean") and hasattr(t, "std"):
            if normalisation_of(t) == (mean, std):
                return transform
            from torchvision import transforms as T

            steps[i] = T.Normalize(mean, std)
            return T.Compose(steps)
    raise SuiteError(f"Cannot re-normalise the preprocessing {transform!r}.",
                     "Use a torchvision, timm or cnn architecture.")


def preprocessing_summary(transform) -> str:
    """One line describing a transform (for registry tags and the zoo table)."""
    if hasattr(transform, "crop_size"):
        interp = getattr(transform.interpolation, "value", transform.interpolation)
        return (f"resize {transform.resize_size[0]} {interp}, crop {transform.crop_size[0]}, "
                f"mean {list(transform.mean)}, std {list(transform.std)}")
    return repr(transform)


# ---------------------------------------------------------------------------------------------
# registry


def _tag_bool(v: str | None, default: bool) -> bool:
    if v is None or v == "":
        return default
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def model_from_version(mv) -> nn.Module:
    """Load a registered ModelVersion's network on CPU (eval mode)."""
    import mlflow

    uri = f"models:/{mv.name}/{mv.version}"
    try:
        # The model was pickled (see the module docstring), so weights_only must be off.
        model = mlflow.pytorch.load_model(uri, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise SuiteError(
            f"Cannot load registered model {mv.name} version {mv.version} ({uri}): "
            f"{type(e).__name__}: {e}",
            "Check that its artifacts are reachable from this machine and that suite (and timm "
            "for timm: models) is installed in this environment.",
        ) from None
    if not isinstance(model, nn.Module):
        raise SuiteError(f"{uri} did not load as a torch nn.Module ({type(model).__name__}).",
                         "Register it with suite (pickle serialization).")
    return model.eval()


def _arch_tag(tags: dict) -> str:
    from suite import tracking

    return tags.get(tracking.VTAG_ARCH) or CNN


def _weights_tag(tags: dict) -> str | None:
    weights = tags.get("weights") or None
    if weights is not None and "." in weights and "_Weights." not in weights:
        weights = None  # a timm id: preprocessing() takes the timm name from the arch
    return weights


def version_preprocessing(tags: dict) -> tuple[Callable, int]:
    """:func:`preprocessing` of a registered version's architecture and weights (its tags;
    no architecture tag means ``cnn``; a ``py:`` network's from its preprocessing tags)."""
    if _arch_tag(tags).startswith(PY_PREFIX):
        return byo.transform_from_tags(tags)
    return preprocessing(_arch_tag(tags), _weights_tag(tags))


def input_side(tags: dict) -> int:
    """Input side (pixels) of a registered network: its ``image_size`` tag (the side it was
    trained or registered at), else its architecture's preprocessing crop."""
    side = tags.get("image_size")
    return int(side) if side else version_preprocessing(tags)[1]


def input_normalisation(tags: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) a registered network was trained on, from its version tags.

    Recorded ``input_mean`` / ``input_std`` tags win. Versions registered before they existed
    get what pretraining fed them: a synthetic source (or, for a cnn, no recorded source: the
    suite's cnn is pretrained on ``synth-source``) -> ``synthetic.MEAN/STD`` (the sets are
    generated normalised with them and fed as they are); any other source (ImageNet for zoo
    checkpoints, an on-disk source) -> the architecture's preprocessing statistics (the weights'
    transforms for torchvision and timm, :class:`SmallImageTransform`'s ImageNet ones for cnn).
    """
    from suite import tracking
    from suite.data import synthetic

    mean, std = tags.get(VTAG_INPUT_MEAN), tags.get(VTAG_INPUT_STD)
    if mean and std:
        return _floats(mean), _floats(std)
    arch, source = _arch_tag(tags), tags.get(tracking.VTAG_SOURCE)
    if source in synthetic.TASKS or (not source and arch == CNN):
        return _floats(synthetic.MEAN), _floats(synthetic.STD)
    return normalisation_of(version_preprocessing(tags)[0])


def architecture_spec(tags: dict) -> dict[str, Any]:
    """What defines a registered version's network at random init, once the training choices
    are left to pretraining: the architecture, plus width and depth for ``cnn`` (the only
    architecture they apply to). Versions with equal specs are one network to train from
    scratch."""
    arch = _arch_tag(tags)
    spec: dict[str, Any] = {"architecture": arch}
    if arch == CNN:
        spec.update(width=int(tags.get("width") or 16), depth=int(tags.get("depth") or 1))
    return spec


def architecture_from_version(mv, num_classes: int) -> nn.Module:
    """A fresh random-init network of a registered version's architecture (from its tags) as
    the architecture builds it: γ learned, no dropout before the classifier, no auxiliary head.
    The version's training choices are not rebuilt: they are pretraining choices, and the
    train-from-scratch setting trains every variant of one architecture alike."""
    from suite import tracking

    tags = mv.tags or {}
    if not tags.get(tracking.VTAG_ARCH):
        raise SuiteError(f"Registered model {mv.name} version {mv.version} has no "
                         f"{tracking.VTAG_ARCH!r} tag.",
                         "Register it with `suite pretrain` or `suite zoo register`.")
    spec = architecture_spec(tags)
    return build_model(spec["architecture"], num_classes, width=spec.get("width", 16),
                       depth=spec.get("depth", 1), weights=None)


def _pip_requirements() -> list[str]:
    import cloudpickle
    import torchvision

    # Explicit, so that MLflow does not load the model in a subprocess to infer them.
    return [f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"cloudpickle=={cloudpickle.__version__}"]


def log_and_register_model(model: nn.Module, name: str, tags: dict[str, Any],
                           input_example: Any = None, code_paths: list[str] | None = None):
    """Log ``model`` to the active MLflow run (artifact ``model``, pickle serialization) and
    register it as a new version of ``name`` with ``tags``; returns the ModelVersion.

    Must be called inside a run (``suite.tracking.start_run``). The model is logged on CPU in
    eval mode; the caller's model (device, train/eval mode) is left as it was.
    ``input_example``: an (n, 3, H, W) float array/tensor (or None): saved with the model, and
    run through it once for the signature (input (-1, 3, H, W) float32 -> logits (-1, classes)
    float32) that the registry UI shows; with pickle serialization neither is needed for
    loading. ``code_paths``: source files/folders saved with the model and put on the path
    when it loads (a ``py:`` network's own module, :func:`suite.models.byo.code_paths`).
    """
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    from suite import tracking

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_and_register_model must be called inside an MLflow run")
    params = list(model.parameters()) + list(model.buffers())
    on_cpu = all(t.device.type == "cpu" for t in params)
    cpu_model = model if on_cpu else copy.deepcopy(model).cpu()
    was_training = cpu_model.training
    cpu_model.eval()
    example = signature = None
    if input_example is not None:
        example = (input_example.detach().cpu().float().numpy()
                   if isinstance(input_example, torch.Tensor) else np.asarray(input_example,
                                                                             np.float32))
        with torch.no_grad():
            out = cpu_model(torch.from_numpy(example))
        out = out[0] if isinstance(out, (tuple, list)) else out  # (logits, aux) in train mode
        # The batch dimension is variable (-1), as MLflow's own inference makes it.
        signature = infer_signature(example, out.detach().float().numpy())
    try:
        info = mlflow.pytorch.log_model(
            cpu_model, name=ARTIFACT_PATH, serialization_format="pickle",
            input_example=example, signature=signature, pip_requirements=_pip_requirements(),
            code_paths=code_paths or None)
    finally:
        cpu_model.train(was_training)
    return tracking.register_version(run.info.run_id, ARTIFACT_PATH, name, tags,
                                     model_uri=info.model_uri)
