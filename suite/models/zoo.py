"""The model zoo: ImageNet checkpoints to study, and registering one in the Model Registry.

:func:`list_zoo` has one row per torchvision ImageNet-1K weights (top-1/top-5 from the weights'
``meta``, parameters, input resolution, preprocessing), with the paper's 16 architectures marked,
plus a row for each paper architecture torchvision lacks (with its timm name where timm has it).

:func:`register_zoo` builds a network with its ImageNet weights — from torchvision's usual
mechanism (the torch hub cache; a download only where there is internet) or from a file — logs
it to MLflow (stage ``zoo``) and registers it with the tags analysis and fine-tuning read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from suite import tracking
from suite.errors import SuiteError
from suite.models import byo

STAGE = "zoo"
SOURCE_DATASET = "imagenet"


@dataclass(frozen=True)
class PaperArch:
    """One of the paper's 16 networks and where to get an equivalent checkpoint."""

    paper_name: str
    torchvision: str | None  # torchvision architecture, None if torchvision lacks it
    torchvision_weights: str | None  # the weights closest to the paper's training recipe
    timm_name: str | None  # timm model (optional extra) where torchvision lacks it


# The 16 networks of Kornblith, Shlens & Le (CVPR 2019), as named in the legend of their figure 1
# and table 1 (arXiv:1805.08974). The paper trained all of them itself, so torchvision/timm
# checkpoints are equivalents, not the paper's weights. ResNets are v1 (torchvision's
# IMAGENET1K_V1 is the original recipe; its V2 weights use label smoothing, mixup, long
# schedules -- exactly the regularisers the paper finds hurt fixed-feature transfer).
PAPER_ARCHS: tuple[PaperArch, ...] = (
    PaperArch("Inception v1", "googlenet", "IMAGENET1K_V1", None),
    PaperArch("BN-Inception", None, None, None),
    PaperArch("Inception v3", "inception_v3", "IMAGENET1K_V1", "inception_v3.tv_in1k"),
    PaperArch("Inception v4", None, None, "inception_v4.tf_in1k"),
    PaperArch("Inception-ResNet v2", None, None, "inception_resnet_v2.tf_in1k"),
    PaperArch("ResNet-50", "resnet50", "IMAGENET1K_V1", "resnet50.tv_in1k"),
    PaperArch("ResNet-101", "resnet101", "IMAGENET1K_V1", "resnet101.tv_in1k"),
    PaperArch("ResNet-152", "resnet152", "IMAGENET1K_V1", "resnet152.tv_in1k"),
    PaperArch("DenseNet-121", "densenet121", "IMAGENET1K_V1", "densenet121.tv_in1k"),
    PaperArch("DenseNet-169", "densenet169", "IMAGENET1K_V1", None),
    PaperArch("DenseNet-201", "densenet201", "IMAGENET1K_V1", None),
    PaperArch("MobileNet v1", None, None, "mobilenetv1_100.ra4_e3600_r224_in1k"),
    PaperArch("MobileNet v2", "mobilenet_v2", "IMAGENET1K_V1", "mobilenetv2_100.ra_in1k"),
    PaperArch("MobileNet v2 (1.4)", None, None, "mobilenetv2_140.ra_in1k"),
    PaperArch("NASNet-A Mobile", None, None, None),
    PaperArch("NASNet-A Large", None, None, "nasnetalarge.tf_in1k"),
)


def _paper_by_arch() -> dict[str, PaperArch]:
    return {p.torchvision: p for p in PAPER_ARCHS if p.torchvision}


def list_zoo() -> list[dict[str, Any]]:
    """One row per torchvision ImageNet weights, then the paper's architectures torchvision
    lacks. Keys: name, weights, default, acc@1, acc@5 (percent), params, params_m, resolution,
    resize, preprocessing, paper (bool), paper_name, in_torchvision, timm_name, source."""
    import torchvision

    from suite.models import (
        preprocessing_summary,
        torchvision_architectures,
        weights_id,
    )

    paper = _paper_by_arch()
    rows: list[dict[str, Any]] = []
    for arch in torchvision_architectures():
        enum_cls = torchvision.models.get_model_weights(arch)
        for w in enum_cls:
            metrics = w.meta.get("_metrics", {}).get("ImageNet-1K", {})
            t = w.transforms()
            p = paper.get(arch)
            rows.append({
                "name": arch,
                "weights": weights_id(w),
                "default": w is enum_cls.DEFAULT,
                "acc@1": metrics.get("acc@1"),
                "acc@5": metrics.get("acc@5"),
                "params": w.meta.get("num_params"),
                "params_m": w.meta.get("num_params", 0) / 1e6,
                "resolution": int(t.crop_size[0]),
                "resize": int(t.resize_size[0]),
                "preprocessing": preprocessing_summary(t),
                # Marked on the weights closest to the paper's recipe only.
                "paper": p is not None and w.name == p.torchvision_weights,
                "paper_name": p.paper_name if p else "",
                "in_torchvision": True,
                "timm_name": p.timm_name if p else None,
                "source": "torchvision",
            })
    for p in PAPER_ARCHS:
        if p.torchvision is None:
            rows.append({
                "name": f"timm:{p.timm_name}" if p.timm_name else p.paper_name,
                "weights": p.timm_name, "default": True, "acc@1": None, "acc@5": None,
                "params": None, "params_m": None, "resolution": None, "resize": None,
                "preprocessing": "", "paper": True, "paper_name": p.paper_name,
                "in_torchvision": False, "timm_name": p.timm_name,
                "source": "timm" if p.timm_name else "unavailable",
            })
    return rows


# ---------------------------------------------------------------------------------------------
# registration


def _parse_name(name: str, weights: str | None) -> tuple[str, str | None]:
    """"resnet50" / "resnet50:IMAGENET1K_V1" / "ResNet50_Weights.IMAGENET1K_V1" ->
    (arch, weights); "timm:<name>" is kept whole."""
    from suite.models import TIMM_PREFIX, torchvision_architectures

    if name.startswith(TIMM_PREFIX):
        return name, weights
    if ":" in name:
        arch, _, w = name.partition(":")
        return arch, weights or w
    if "_Weights." in name:  # a full weights id
        import torchvision

        for arch in torchvision_architectures():
            enum_cls = torchvision.models.get_model_weights(arch)
            if name.split(".")[0] == enum_cls.__name__:
                return arch, weights or name
    return name, weights


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a file holding a state dict, a training checkpoint ({"state_dict":...},
    {"model": ...}, ...), or a whole pickled nn.Module; a "module." prefix (DataParallel) is
    stripped."""
    if not path.is_file():
        raise SuiteError(f"Weights file {path} does not exist.", "Check the path.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- not plain tensors: a pickled module or full checkpoint
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise SuiteError(f"Cannot read weights file {path}: {type(e).__name__}: {e}",
                             "Pass a file written by torch.save (a state_dict or checkpoint).") \
                from None
    return _unwrap_state(obj, path)


def _unwrap_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside what ``torch.load`` returned (see :func:`_read_checkpoint`)."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "module", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SuiteError(f"Weights file {path} holds no state_dict of tensors.",
                         "Save it with torch.save(model.state_dict(), PATH).")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _mismatch_error(arch: str, path: Path, state: dict, reference: nn.Module) -> SuiteError:
    expected = reference.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)}")
    if shape:
        parts.append(f"shape mismatches (file vs {arch}): {few(shape)}")
    return SuiteError(
        f"Weights file {path} does not fit architecture {arch}: " + "; ".join(parts or
                                                                             ["load failed"])
        + ".",
        "Pass the architecture the checkpoint was trained with (suite zoo list), or a file "
        "saved from that architecture.")


def _load_torchvision(arch: str, weights: str | None, weights_file: Path | None) -> nn.Module:
    from suite.models import _build_torchvision, resolve_weights

    w = resolve_weights(arch, weights or "DEFAULT")
    if weights_file is None:
        return _build_torchvision(arch, len(w.meta["categories"]), bn_scale=True, dropout=None,
                                  aux_head=False, weights=w).eval()
    state = _read_checkpoint(weights_file)
    try:
        model = _build_torchvision(arch, len(w.meta["categories"]), bn_scale=True,
                                   dropout=None, aux_head=False, weights=w,
                                   state_dict_loader=lambda: dict(state))
    except RuntimeError as e:
        if "state_dict" not in str(e):
            raise
        import torchvision

        ref_kwargs = {"aux_logits": False} if arch in ("inception_v3", "googlenet") else {}
        reference = torchvision.models.get_model(arch, weights=None, **ref_kwargs)
        raise _mismatch_error(arch, weights_file, state, reference) from None
    return model.eval()


def _classifier_dropout(model: nn.Module) -> float:
    """p of the dropout right before the classifier (0 if none): the architecture's own value,
    recorded so that the scratch setting rebuilds the same network."""
    from suite.models import head_path

    path = head_path(model)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, nn.Sequential):
        names = list(parent._modules)
        i = names.index(attr)
        if i > 0 and isinstance(parent._modules[names[i - 1]], nn.Dropout):
            return float(parent._modules[names[i - 1]].p)
    elif isinstance(getattr(parent, "dropout", None), nn.Dropout):
        return float(parent.dropout.p)
    return 0.0


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def register_zoo(name: str, *, weights_file: str | Path | None = None,
                 source_top1: float | None = None, registered_name: str | None = None,
                 study: str = "zoo", weights: str | None = None,
                 feature_layer: str | None = None, input_size: int | None = None,
                 resize: int | None = None, mean: Any = None, std: Any = None,
                 interpolation: str | None = None):
    """Register an ImageNet checkpoint as a new model version; returns the ModelVersion.

    ``name``: a torchvision architecture ("resnet50"), optionally with weights
    ("resnet50:IMAGENET1K_V1", default: torchvision's DEFAULT), "timm:<name>", or a network of
    your own, "py:MODULE:FACTORY" (:mod:`suite.models.byo`; needs ``weights_file`` and
    ``source_top1``; ``feature_layer`` and the preprocessing options ``input_size``,
    ``resize``, ``mean``, ``std``, ``interpolation`` apply to it only).
    ``weights_file``: a state dict / checkpoint to use instead of the cache or a download (a
    checkpoint of your own: pass ``source_top1`` too). The registered name defaults to
    ``tv-<arch>`` (``timm-<name>``, ``py-<factory>``). Registering the same checkpoint again
    in the same study returns the existing version.

    Version tags: architecture, source_dataset=imagenet, source_top1 (percent), weights,
    preprocessing, image_size, input_mean/input_std (the preprocessing's normalisation),
    num_classes, bn_scale/dropout/aux_head, suite.study, suite.cell.
    """
    from suite.models import (
        TIMM_PREFIX,
        VTAG_INPUT_MEAN,
        VTAG_INPUT_STD,
        log_and_register_model,
        normalisation_of,
        preprocessing,
        preprocessing_summary,
        resolve_weights,
        weights_id,
    )

    weights_file = Path(weights_file).expanduser() if weights_file else None
    if source_top1 is not None and not 0.0 <= source_top1 <= 100.0:
        raise SuiteError(f"source_top1={source_top1} is not a percentage.",
                         "Pass the ImageNet top-1 accuracy in percent, e.g. 76.13.")
    options = {"input_size": input_size, "resize": resize, "mean": mean, "std": std,
               "interpolation": interpolation}
    if name.startswith(byo.PY_PREFIX):
        return _register_py(name, weights_file, source_top1, registered_name, study,
                            feature_layer, options)
    given = [k for k, v in (("feature_layer", feature_layer), *options.items()) if v is not None]
    if given:
        raise SuiteError(f"{', '.join(given)} only apply to py:MODULE:FACTORY networks.",
                         f"{name} takes its preprocessing and classifier from its weights.")
    arch, weights = _parse_name(name, weights)
    if arch.startswith(TIMM_PREFIX):
        model, wid, top1, transform, size = _load_timm(arch[len(TIMM_PREFIX):], weights_file,
                                                       source_top1)
    else:
        from suite.models import check_arch

        check_arch(arch)
        if arch == "cnn":
            raise SuiteError("The 'cnn' architecture has no ImageNet checkpoints.",
                             "Use `suite pretrain` for cnn models.")
        w = resolve_weights(arch, weights or "DEFAULT")
        wid = weights_id(w)
        transform, size = preprocessing(arch, w)
        top1 = source_top1
        if top1 is None:
            top1 = w.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        model = None  # built below, only if not registered already
    reg_name = registered_name or (f"timm-{arch[len(TIMM_PREFIX):]}"
                                   if arch.startswith(TIMM_PREFIX) else f"tv-{arch}")
    reg_name = tracking.safe_name(reg_name)
    cell = tracking.cell_key(stage=STAGE, study=study, arch=arch, weights=wid,
                             file=_file_fingerprint(weights_file) if weights_file else "",
                             source_top1=top1)
    existing = tracking.find_version_by_cell(reg_name, cell)
    if existing is not None:
        return existing
    if model is None:
        from suite.progress import status

        with status(f"loading {arch} ({wid})"):
            model = _load_torchvision(arch, weights, weights_file)

    num_classes = _num_outputs(model)
    tags = {
        tracking.VTAG_ARCH: arch,
        tracking.VTAG_SOURCE: SOURCE_DATASET,
        tracking.VTAG_SOURCE_TOP1: float(top1),
        # "weights meta": torchvision's published top-1 of these weights; "user": given.
        "source_top1_origin": "user" if source_top1 is not None else "weights meta",
        "weights": wid,
        "weights_file": str(weights_file.resolve()) if weights_file else "",
        "preprocessing": preprocessing_summary(transform),
        "image_size": size,
        # The statistics it was trained on: every consumer normalises its inputs with them.
        VTAG_INPUT_MEAN: ",".join(f"{v:g}" for v in normalisation_of(transform)[0]),
        VTAG_INPUT_STD: ",".join(f"{v:g}" for v in normalisation_of(transform)[1]),
        "num_classes": num_classes,
        "bn_scale": True,
        "dropout": _classifier_dropout(model) if not arch.startswith(TIMM_PREFIX) else 0.0,
        "aux_head": False,
        "label_smoothing": "",  # unknown for third-party checkpoints
        tracking.TAG_STUDY: study,
        tracking.TAG_CELL: cell,
    }
    run_tags = tracking.run_tags(study, STAGE, model=reg_name, cell=cell)
    with tracking.start_run(study, f"zoo {arch} ({wid})", run_tags) as run:
        import mlflow

        mlflow.log_params({"architecture": arch, "weights": wid,
                           "weights_file": str(weights_file or ""), "image_size": size})
        mlflow.log_metric("source_top1", float(top1))
        tags["run_id"] = run.info.run_id
        example = torch.zeros(1, 3, size, size)
        return log_and_register_model(model, reg_name, tags, example)


def _register_py(arch: str, weights_file: Path | None, source_top1: float | None,
                 registered_name: str | None, study: str, feature_layer: str | None,
                 options: dict[str, Any]):
    """:func:`register_zoo` for a ``py:`` network: build it with its factory, load the state
    dict (tensors only), record its penultimate layer and preprocessing, register it."""
    from suite.models import log_and_register_model, preprocessing_summary

    if weights_file is None or source_top1 is None:
        raise SuiteError(f"{arch}: a network of your own needs its weights and source accuracy.",
                         "Pass --weights-file FILE (torch.save(model.state_dict(), FILE)) and "
                         "--source-top1 PERCENT (its top-1 on the source task).")
    spec = byo.parse(arch)
    built = byo.build(arch)
    layer = feature_layer or built.feature_layer
    if layer:
        byo.layer_of(built.model, layer)
    pre = byo.preprocessing_of(built, **options)
    reg_name = tracking.safe_name(registered_name or f"py-{spec.factory}")
    cell = tracking.cell_key(stage=STAGE, study=study, arch=arch,
                             file=_file_fingerprint(weights_file), source_top1=source_top1,
                             feature_layer=layer, preprocessing=byo.preprocessing_tags(pre))
    existing = tracking.find_version_by_cell(reg_name, cell)
    if existing is not None:
        return existing
    model = byo.load_weights(built.model, weights_file, arch).eval()
    if layer:
        setattr(model, byo.FEATURE_LAYER_ATTR, layer)
    transform = byo.make_transform(pre)
    try:
        dim = byo.feature_dim(model, pre.input_size)
    except SuiteError:
        raise
    except Exception as e:  # noqa: BLE001 -- the user's forward failed on a test input
        raise SuiteError(f"{arch} failed on a (1, 3, {pre.input_size}, {pre.input_size}) input: "
                         f"{type(e).__name__}: {e}",
                         "Check --input-size (the side the network expects) and "
                         "--feature-layer.") from None
    tags = {
        tracking.VTAG_ARCH: arch,
        tracking.VTAG_SOURCE: SOURCE_DATASET,
        tracking.VTAG_SOURCE_TOP1: float(source_top1),
        "source_top1_origin": "user",
        "weights": weights_file.name,
        "weights_file": str(weights_file.resolve()),
        "factory": spec.name,
        "factory_kwargs": ",".join(f"{k}={v}" for k, v in spec.kwargs.items()),
        "feature_layer": layer or "",
        "feature_dim": dim,
        "classifier": _classifier_path(model),
        "preprocessing": preprocessing_summary(transform),
        **byo.preprocessing_tags(pre),
        "num_classes": _num_outputs(model),
        "bn_scale": True,
        "dropout": _classifier_dropout(model),
        "aux_head": False,
        "label_smoothing": "",  # unknown for a checkpoint trained elsewhere
        tracking.TAG_STUDY: study,
        tracking.TAG_CELL: cell,
    }
    run_tags = tracking.run_tags(study, STAGE, model=reg_name, cell=cell)
    with tracking.start_run(study, f"zoo {spec.factory} ({weights_file.name})", run_tags) as run:
        import mlflow

        mlflow.log_params({"architecture": arch, "weights_file": str(weights_file),
                           "image_size": pre.input_size, "feature_layer": layer or ""})
        mlflow.log_metric("source_top1", float(source_top1))
        tags["run_id"] = run.info.run_id
        example = torch.zeros(1, 3, pre.input_size, pre.input_size)
        return log_and_register_model(model, reg_name, tags, example,
                                      code_paths=byo.code_paths(spec))


def _classifier_path(model: nn.Module) -> str:
    from suite.models import head_path

    try:
        return head_path(model)
    except SuiteError:
        return ""


def _num_outputs(model: nn.Module) -> int:
    from suite.models import _classes, _is_timm, head_path

    if _is_timm(model):
        return int(model.num_classes)
    return _classes(model.get_submodule(head_path(model)))


def _load_timm(name: str, weights_file: Path | None, source_top1: float | None):
    from suite.models import timm_models

    timm = timm_models.require_timm()
    if source_top1 is None:
        raise SuiteError(f"timm:{name}: timm checkpoints carry no ImageNet top-1.",
                         "Pass --source-top1 (percent; timm's results tables list it).")
    if weights_file is None:
        model = timm_models.build(name, 1000, weights="DEFAULT")
    else:
        model = timm.create_model(name, pretrained=False)
        state = _read_checkpoint(weights_file)
        try:
            model.load_state_dict(state)
        except RuntimeError:
            raise _mismatch_error(f"timm:{name}", weights_file, state, model) from None
    transform, size = timm_models.preprocessing(name)
    wid = getattr(model, "pretrained_cfg", {}).get("hf_hub_id") or name
    return model.eval(), wid, float(source_top1), transform, size


__all__ = ["PAPER_ARCHS", "PaperArch", "list_zoo", "register_zoo"]
