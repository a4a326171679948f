"""Networks of the user's own: ``py:PACKAGE.MODULE:FACTORY`` architectures.

A factory is any importable callable that returns a randomly initialised ``nn.Module`` (its
weights come from a state dict file, :func:`load_weights`). Arguments it needs are given in the
name, ``py:MOD:FN?key=value&key2=value2`` (values read as YAML scalars: ``32``, ``0.5``,
``true``, ``[1, 2]``; anything else stays a string), or fixed by a one-line wrapper module the
user writes (``def make(): return MyNet(width=32)``) when they are not scalars.

It may return, instead of the module alone:

- ``(module, "layer.name")``: the module and its penultimate layer (whose output, flattened,
  are the features; default: the input of the final ``nn.Linear``, as for every network);
- a dict ``{"model": module, "feature_layer": ..., "input_size": 224, "resize": 256, "mean":
  [...], "std": [...], "interpolation": "bicubic"}``: any of the preprocessing keys as well.

Preprocessing (resize the shorter side, centre-crop, normalise) comes from explicit options
first (``suite zoo register --input-size/--resize/--mean/--std/--interpolation``), then from
the factory, then ImageNet's defaults (:data:`DEFAULTS`). A registered version records it in its
tags (``image_size``, ``resize_size``, ``interpolation``, ``input_mean``, ``input_std``), from
which every consumer rebuilds the same transform (:func:`transform_from_tags`).

The factory's module (or its top-level package) travels with the logged model (MLflow's
``code_paths``): loading a registered version imports it from the model's own copy, so workers
and other machines need not have it on their path.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from suite.errors import SuiteError

PY_PREFIX = "py:"
# Instance attribute of a registered module naming its penultimate layer (pickled with it).
FEATURE_LAYER_ATTR = "suite_feature_layer"
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
PREPROCESSING_KEYS = ("input_size", "resize", "mean", "std", "interpolation")


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing of a network: resize the shorter side to ``resize`` with
    ``interpolation``, centre-crop ``input_size``, normalise with ``mean`` / ``std``."""

    input_size: int = 224
    resize: int = 0  # 0: round(input_size * 256 / 224), torchvision's ratio (256 for 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    @property
    def resize_size(self) -> int:
        return self.resize or round(self.input_size * 256 / 224)


DEFAULTS = Preprocessing()


@dataclass(frozen=True)
class FactorySpec:
    """A parsed ``py:MODULE:FACTORY?key=value`` architecture."""

    module: str
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{PY_PREFIX}{self.module}:{self.factory}"


@dataclass
class Built:
    """What a factory gave: the module, its penultimate layer ("" = the classifier's input)
    and the preprocessing settings it named (a subset of :data:`PREPROCESSING_KEYS`)."""

    model: nn.Module
    feature_layer: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)


def is_py(arch: str) -> bool:
    return arch.startswith(PY_PREFIX)


def parse(arch: str) -> FactorySpec:
    """``py:pkg.mod:make_net?width=32&bn=false`` -> FactorySpec("pkg.mod", "make_net",
    {"width": 32, "bn": False})."""
    import yaml

    body = arch[len(PY_PREFIX):] if is_py(arch) else arch
    target, _, query = body.partition("?")
    module, sep, factory = target.rpartition(":")
    if not sep or not module or not factory.isidentifier():
        raise SuiteError(f"Architecture {arch!r} is not py:MODULE:FACTORY.",
                         "For example py:mynets.resnet:make_resnet (a module importable from "
                         "PYTHONPATH or the current folder), optionally "
                         "py:mynets.resnet:make_resnet?width=32.")
    kwargs: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if not key.isidentifier():
            raise SuiteError(f"Factory argument {key!r} of {arch!r} is not a Python name.",
                             "Write arguments as ?key=value&other=value.")
        try:
            kwargs[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            kwargs[key] = value
    return FactorySpec(module, factory, kwargs)


def import_factory(spec: FactorySpec) -> Callable[..., Any]:
    """The factory callable (the current folder is importable, as with ``python -m``)."""
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        mod = importlib.import_module(spec.module)
    except ImportError as e:
        raise SuiteError(f"Cannot import {spec.module!r} for {spec.name}: {e}.",
                         "Put the folder that holds it on PYTHONPATH (or run from it), or "
                         "install its package.") from None
    fn = getattr(mod, spec.factory, None)
    if not callable(fn):
        raise SuiteError(f"{spec.module} has no callable {spec.factory!r}.",
                         f"Define def {spec.factory}(...) -> torch.nn.Module in "
                         f"{getattr(mod, '__file__', spec.module)}.")
    return fn


def check(arch: str) -> None:
    """Raise SuiteError unless ``arch`` parses and its factory can be imported."""
    import_factory(parse(arch))


def build(arch: str) -> Built:
    """Call the factory of ``arch`` with its arguments; returns what it gave (see the module
    docstring for the accepted return values)."""
    spec = parse(arch)
    fn = import_factory(spec)
    try:
        out = fn(**spec.kwargs)
    except TypeError as e:
        try:
            sig = f"{spec.factory}{inspect.signature(fn)}"
        except (TypeError, ValueError):
            sig = spec.factory
        raise SuiteError(f"Calling {sig} with {spec.kwargs or 'no arguments'} failed: {e}.",
                         "Pass its arguments as py:MOD:FN?key=value, or write a wrapper "
                         "function that takes none.") from None
    built = _as_built(out, spec.name)
    if built.feature_layer:
        layer_of(built.model, built.feature_layer)  # fail now on a wrong name
    return built


def _as_built(out: Any, name: str) -> Built:
    if isinstance(out, nn.Module):
        return Built(out)
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module):
        return Built(out[0], str(out[1] or ""))
    if isinstance(out, dict) and isinstance(out.get("model"), nn.Module):
        unknown = set(out) - {"model", "feature_layer", *PREPROCESSING_KEYS}
        if unknown:
            raise SuiteError(f"{name} returned unknown keys {sorted(unknown)}.",
                             f"Use model, feature_layer, {', '.join(PREPROCESSING_KEYS)}.")
        pre = {k: out[k] for k in PREPROCESSING_KEYS if out.get(k) not in (None, "")}
        return Built(out["model"], str(out.get("feature_layer") or ""), pre)
    raise SuiteError(f"{name} returned {type(out).__name__}, not a torch.nn.Module.",
                     "Return the module, (module, 'penultimate.layer'), or a dict with "
                     "'model'.")


def layer_of(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        import difflib

        close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
        raise SuiteError(f"{type(model).__name__} has no layer {name!r}.",
                         (f"Did you mean {', '.join(close)}? " if close else "")
                         + "Name a submodule as model.named_modules() lists it.") from None


def preprocessing_of(built: Built | None = None, **options: Any) -> Preprocessing:
    """The preprocessing: ``options`` that are not None win over the factory's, which win over
    :data:`DEFAULTS`; checked."""
    merged: dict[str, Any] = {}
    if built is not None:
        merged.update(built.preprocessing)
    merged.update({k: v for k, v in options.items() if v is not None})
    unknown = set(merged) - set(PREPROCESSING_KEYS)
    if unknown:
        raise SuiteError(f"Unknown preprocessing options {sorted(unknown)}.",
                         f"Use {', '.join(PREPROCESSING_KEYS)}.")
    pre = replace(DEFAULTS, **merged)
    mean, std = _vec(pre.mean, "mean"), _vec(pre.std, "std")
    interp = str(pre.interpolation).lower()
    if interp not in INTERPOLATIONS:
        raise SuiteError(f"Interpolation {pre.interpolation!r} is not one of "
                         f"{', '.join(INTERPOLATIONS)}.", "For example --interpolation bicubic.")
    if int(pre.input_size) < 8 or int(pre.resize or pre.input_size) < int(pre.input_size):
        raise SuiteError(f"input_size={pre.input_size}, resize={pre.resize}: the crop must be at "
                         "least 8 pixels and no larger than the resized image.",
                         "For example --input-size 224 --resize 256.")
    if any(s <= 0 for s in std):
        raise SuiteError(f"std {std} has a non-positive value.", "Pass e.g. 0.229,0.224,0.225.")
    return replace(pre, input_size=int(pre.input_size), resize=int(pre.resize or 0), mean=mean,
                   std=std, interpolation=interp)


def _vec(v: Any, what: str) -> tuple[float, ...]:
    if isinstance(v, str):
        v = [x for x in v.split(",") if x.strip()]
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise SuiteError(f"{what} must be 3 numbers, got {v!r}.",
                         f"For example --{what} 0.485,0.456,0.406.") from None
    if len(out) != 3:
        raise SuiteError(f"{what} must have 3 values (RGB), got {len(out)}.",
                         f"For example --{what} 0.485,0.456,0.406.")
    return out


def make_transform(pre: Preprocessing):
    """torchvision's ImageClassification preset for ``pre`` (PIL or uint8 tensor -> float
    (3, input_size, input_size)), the same object type torchvision weights use, so
    :func:`suite.models.with_normalisation` and ``preprocessing_summary`` treat it alike."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    return ImageClassification(crop_size=pre.input_size, resize_size=pre.resize_size,
                               mean=list(pre.mean), std=list(pre.std),
                               interpolation=InterpolationMode(pre.interpolation))


def preprocessing_tags(pre: Preprocessing) -> dict[str, Any]:
    return {"image_size": pre.input_size, "resize_size": pre.resize_size,
            "interpolation": pre.interpolation,
            "input_mean": ",".join(f"{v:g}" for v in pre.mean),
            "input_std": ",".join(f"{v:g}" for v in pre.std)}


def transform_from_tags(tags: dict) -> tuple[Callable, int]:
    """(transform, input side) of a registered ``py:`` version, from its tags (defaults where
    one is missing)."""
    def get(key: str):
        v = tags.get(key)
        return v if v not in (None, "") else None

    pre = preprocessing_of(input_size=int(get("image_size") or DEFAULTS.input_size),
                           resize=int(get("resize_size") or 0),
                           mean=get("input_mean"), std=get("input_std"),
                           interpolation=get("interpolation"))
    return make_transform(pre), pre.input_size


def load_weights(model: nn.Module, path: Path, arch: str) -> nn.Module:
    """Load the state dict in ``path`` into ``model`` (strictly), reading tensors only
    (``torch.load(weights_only=True)``: a file that needs code to unpickle is refused)."""
    from suite.models.zoo import _mismatch_error, _unwrap_state

    if not path.is_file():
        raise SuiteError(f"Weights file {path} does not exist.", "Check the path.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- pickled code, or not a torch file
        raise SuiteError(
            f"Weights file {path} is not a plain state dict ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}).",
            "Save the weights only: torch.save(model.state_dict(), PATH). A pickled module or "
            "a checkpoint holding other objects is not loaded (it could run code).") from None
    state = _unwrap_state(obj, path)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise _mismatch_error(arch, path, state, model) from None
    return model


def feature_dim(model: nn.Module, side: int) -> int:
    """Length of the features of one (1, 3, side, side) input."""
    from suite.models import feature_extractor

    with torch.no_grad():
        out = feature_extractor(model)(torch.zeros(1, 3, side, side))
    return int(out.shape[1])


class LayerFeatures(nn.Module):
    """``model`` cut after ``layer``: images (N, 3, H, W) -> that layer's output flattened to
    (N, D). The forward stops at the layer (a hook raises once it has the output), so the rest
    of the network does not run."""

    class _Stop(Exception):
        pass

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.model, self.layer = model, layer
        self._out: torch.Tensor | None = None
        layer_of(model, layer).register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self._out = output[0] if isinstance(output, (tuple, list)) else output
        raise LayerFeatures._Stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            self.model(x)
        except LayerFeatures._Stop:
            pass
        out, self._out = self._out, None
        if out is None:
            raise SuiteError(f"Layer {self.layer!r} did not run in the forward pass.",
                             "Name a layer the network's forward uses (--feature-layer).")
        return torch.flatten(out, 1)


def code_paths(spec: FactorySpec) -> list[str]:
    """What to copy into the logged model so it loads without the user's path: the factory's
    top-level package folder (or its single module file); nothing for an installed package."""
    top = importlib.import_module(spec.module.split(".")[0])
    where = getattr(top, "__file__", None)
    if not where:
        return []
    path = Path(where).resolve()
    if any(part in ("site-packages", "dist-packages") for part in path.parts):
        return []
    return [str(path.parent if path.name == "__init__.py" else path)]


__all__ = ["DEFAULTS", "FEATURE_LAYER_ATTR", "PY_PREFIX", "Built", "FactorySpec",
           "LayerFeatures", "Preprocessing", "build", "check", "code_paths", "is_py",
           "load_weights", "make_transform", "parse", "preprocessing_of", "preprocessing_tags",
           "transform_from_tags"]
