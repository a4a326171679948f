"""Configuration: frozen dataclasses, one per stage, plus the study that composes them.

What is logged to MLflow as params is exactly the config that ran (``flatten(asdict(cfg))``).
Defaults are a working CPU baseline; presets (``suite/presets/*.yaml``) only override.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from suite.errors import SuiteError

# The paper's regularisation grid: 45 log-spaced values from 1e-6 to 1e5 (11 decades, 4 per
# decade + 1). The loss is  sum_i CE(x_i W + b, y_i) + (l2 / 2) * ||W||_F^2,  i.e. scikit-learn's
# ``C = 1 / l2`` (scikit-learn sums the loss over examples).
PAPER_L2_GRID: tuple[float, ...] = tuple(10.0 ** (-6 + 11 * i / 44) for i in range(45))

# Transferability estimators the probe stage can log (suite.estimators; the registry there
# checks this list against its own). The default of a study: all of them, each where it applies
# (leep and nce need the source head's probabilities).
ESTIMATOR_NAMES: tuple[str, ...] = ("logme", "leep", "nce", "hscore", "hscore_shrinkage",
                                    "nleep", "gbc", "sfda", "transrate")


class Setting(str, enum.Enum):
    """The three transfer settings of the paper."""

    logistic = "logistic"  # L2 logistic regression on fixed penultimate features
    finetune = "finetune"  # whole network fine-tuned from the pretrained checkpoint
    scratch = "scratch"  # same architecture trained from random initialisation


class ProbeBackend(str, enum.Enum):
    """Solver of the fixed-feature logistic-regression protocol."""

    auto = "auto"  # cuda on a GPU with the CUDA kernels compiled, else cpu
    cpu = "cpu"  # suite._C C++/OpenMP kernels + torch (MKL) GEMMs
    cuda = "cuda"  # suite._C CUDA kernels + cuBLAS GEMMs
    cuml = "cuml"  # cuml.linear_model.LogisticRegression (optional extra)
    reference = "reference"  # plain PyTorch, same algorithm as cpu/cuda
    sklearn = "sklearn"  # scikit-learn lbfgs, warm-started along the grid


class ProbeSearch(str, enum.Enum):
    """How the probe walks the l2 grid (suite.probe.solver)."""

    exhaustive = "exhaustive"  # every value fitted to the refit's tolerance (the paper's sweep)
    adaptive = "adaptive"  # APPROXIMATION: settled fits, stops past the validation peak


class Decoder(str, enum.Enum):
    """Where feature extraction decodes the JPEGs of on-disk datasets (suite.data.decode)."""

    auto = "auto"  # device on CUDA with a tensor-capable transform, else pil
    pil = "pil"  # PIL in the DataLoader workers (the reference; what training uses)
    torchvision = "torchvision"  # torchvision.io in the workers, tensor transforms
    device = "device"  # batched on the extraction device (nvJPEG on CUDA)


class Executor(str, enum.Enum):
    """Where a study's ready cells run (suite.executors)."""

    inprocess = "inprocess"  # the driver runs them itself, one at a time (the default)
    local = "local"  # `jobs` worker processes on this machine
    slurm = "slurm"  # one SLURM job per cell (needs a shared tracking server)


class Launcher(str, enum.Enum):
    """How a study runs its pretrain/fine-tune cells."""

    inprocess = "inprocess"  # call the stage functions directly (fast; the default)
    project = "project"  # mlflow.projects.run(projects/<stage>) per cell (a child process each)


@dataclass(frozen=True)
class ModelConfig:
    """One network of a study: architecture plus the four training choices the paper studies."""

    name: str  # short name, unique within a study; the registered model is "<study>-<name>"
    arch: str = "cnn"  # "cnn" (suite.models.cnn.SmallCNN) or a torchvision classification arch
    width: int = 16  # cnn: channels of the first stage; doubles at each of the 3 stages
    depth: int = 1  # cnn: conv blocks per stage
    bn_scale: bool = True  # learn batch-norm scale γ (the paper: fixing γ=1 hurts transfer)
    label_smoothing: float = 0.0  # source-task label smoothing ε
    dropout: float = 0.0  # dropout probability before the classifier
    aux_head: bool = False  # auxiliary classifier on the middle stage, loss weight 0.4
    epochs: int = 4  # source-task pretraining epochs (a cheap knob for source accuracy)
    # A published checkpoint instead of pretraining: torchvision weights id ("DEFAULT",
    # "IMAGENET1K_V2", ...) registered through `suite zoo register` into the study; "" = train
    # on the study's source task. weights_file: a local state dict for it (offline machines).
    weights: str = ""
    weights_file: str = ""
    source_top1: float = -1.0  # percent, for a weights_file of your own; -1 = from metadata


@dataclass(frozen=True)
class PretrainConfig:
    """Train one model on the source task and register it (stage ``pretrain``)."""

    model: ModelConfig
    source: str = "synth-source"  # dataset name (suite data list)
    batch_size: int = 128
    lr: float = 0.1  # SGD + Nesterov momentum 0.9, cosine decay to 0
    weight_decay: float = 5e-4
    seed: int = 0
    registered_name: str = ""  # registry name; "" means "<study>-<model.name>"
    study: str = "default"  # experiment name (one experiment per study)
    data_root: str = ""  # root of on-disk datasets; "" for the built-in synthetic ones
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    num_workers: int = -1  # DataLoader workers for on-disk datasets; -1 = sized to the machine
    skip_corrupt: bool = False  # drop unreadable images (listed in the run) instead of failing


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tune (or train from scratch) one registered model on one target over an lr × wd grid.

    Each grid point is a run of its own (a cell of a study), nested under the parent run once the
    selection has run; the parent run logs the point selected on validation,
    its test accuracy, and its learning curve (``curve_val_accuracy`` by optimisation step).
    """

    model_name: str  # registered model name
    dataset: str
    model_version: str = "latest"  # version number or "latest"
    setting: Setting = Setting.finetune  # finetune or scratch
    lrs: tuple[float, ...] = (0.01, 0.1)  # SGD + Nesterov 0.9, cosine decay
    weight_decays: tuple[float, ...] = (1e-4,)
    steps: int = 300  # optimisation steps per grid point
    batch_size: int = 64
    eval_every: int = 50  # steps between validation evaluations (the learning curve)
    seed: int = 0
    study: str = "default"
    data_root: str = ""
    device: str = "auto"
    num_workers: int = -1
    skip_corrupt: bool = False


@dataclass(frozen=True)
class ProbeConfig:
    """Fixed-feature logistic regression on penultimate features (stage ``probe``)."""

    model_name: str  # registered model name
    dataset: str
    model_version: str = "latest"
    backend: ProbeBackend = ProbeBackend.auto
    # exhaustive: every l2 converged, the selection is the full sweep's; adaptive: faster, an
    # approximation that can stop on a bump of the validation curve and select a worse value
    search: ProbeSearch = ProbeSearch.exhaustive
    l2_grid: tuple[float, ...] = PAPER_L2_GRID
    val_fraction: float = 0.2  # held out of train when the dataset has no validation split
    seed: int = 0
    study: str = "default"
    data_root: str = ""
    device: str = "auto"
    batch_size: int = 256  # feature-extraction batch
    num_workers: int = -1
    decode: Decoder = Decoder.auto  # where JPEGs are decoded for extraction
    skip_corrupt: bool = False
    # Transferability estimators scored on the training split's cached features (metrics
    # estimator.<name>); () = none. Not part of the probe's cell key: they do not change the fit.
    estimators: tuple[str, ...] = ESTIMATOR_NAMES


@dataclass(frozen=True)
class GridOptions:
    """Study-level options of the fine-tune / scratch grids."""

    lrs: tuple[float, ...] = (0.01, 0.1)
    weight_decays: tuple[float, ...] = (1e-4,)
    steps: int = 300
    batch_size: int = 64
    eval_every: int = 50


@dataclass(frozen=True)
class AnalysisConfig:
    """Statistics over a study (stage ``analyze``)."""

    study: str = "default"
    n_resamples: int = 2000  # bootstrap resamples (models are resampled)
    confidence: float = 0.95
    seed: int = 0
    out_dir: str = ""  # where the report/CSV/JSON go locally; "" = <workspace>/reports/<study>


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of each SLURM job of a ``slurm`` study (never part of a cell's key)."""

    partition: str = ""  # "" = the cluster's default partition
    gpus_per_job: int = 0  # --gres=gpu:N
    cpus_per_job: int = 0  # --cpus-per-task (and the job's torch threads); 0 = SLURM's default
    time_limit: str = ""  # --time, e.g. "04:00:00"; "" = the partition's default
    extra_sbatch: tuple[str, ...] = ()  # further sbatch options, e.g. ["--account=proj"]


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: models × datasets × settings. ``suite study run CONFIG`` runs it."""

    name: str = "mini"
    source: str = "synth-source"
    models: tuple[ModelConfig, ...] = ()
    datasets: tuple[str, ...] = ()
    settings: tuple[Setting, ...] = (Setting.logistic, Setting.finetune, Setting.scratch)
    pretrain_batch_size: int = 128
    pretrain_lr: float = 0.1
    pretrain_weight_decay: float = 5e-4
    probe_backend: ProbeBackend = ProbeBackend.auto
    probe_search: ProbeSearch = ProbeSearch.exhaustive  # adaptive: an approximation, see probe
    decode: Decoder = Decoder.auto  # where the probes' feature extraction decodes JPEGs
    l2_grid: tuple[float, ...] = PAPER_L2_GRID
    # Transferability estimators the probes log (suite.estimators); [] disables them.
    estimators: tuple[str, ...] = ESTIMATOR_NAMES
    finetune: GridOptions = GridOptions()
    scratch: GridOptions = GridOptions(steps=300, lrs=(0.03, 0.1))
    n_resamples: int = 2000
    seed: int = 0
    data_root: str = ""
    device: str = "auto"
    launcher: Launcher = Launcher.inprocess
    num_workers: int = -1
    skip_corrupt: bool = False  # every stage drops unreadable images instead of failing
    # Where cells run (resources: none of these enters a cell's key).
    executor: Executor = Executor.inprocess
    jobs: int = 1  # local: worker processes (one GPU each on a GPU box)
    max_concurrent: int = 0  # slurm: jobs queued or running at once; 0 = no cap
    slurm: SlurmOptions = SlurmOptions()


# ---------------------------------------------------------------------------------------------
# (de)serialisation


def flatten(cfg: Any, prefix: str = "") -> dict[str, str]:
    """``asdict`` flattened to ``{"a.b": "value"}`` for ``mlflow.log_params``."""
    d = asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)) and v and isinstance(v[0], dict):
            for i, item in enumerate(v):
                out.update(flatten(item, f"{key}.{i}."))
        elif isinstance(v, enum.Enum):
            out[key] = v.value
        elif isinstance(v, (list, tuple)):
            out[key] = ",".join(_fmt(x) for x in v)
        else:
            out[key] = _fmt(v)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a plain dict (YAML), with a clear error on unknown keys or
    wrongly typed values."""
    if not isinstance(data, dict):
        raise SuiteError(
            f"{where} must be a mapping of option names to values, got {type(data).__name__}.",
            "Check the YAML indentation against a preset (suite study show mini).",
        )
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SuiteError(
            f"Unknown option(s) {', '.join(unknown)} in {where}.",
            f"Valid options are: {', '.join(known)}.",
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(known[name].type, value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise SuiteError(f"Incomplete {where}: {e}.", "Add the missing option.") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    tp = eval(tp, globals()) if isinstance(tp, str) else tp  # noqa: S307 (our own annotations)
    origin = getattr(tp, "__origin__", None)
    try:
        if dataclasses.is_dataclass(tp):
            return from_dict(tp, value, where)
        if origin is tuple:
            (inner, *_) = tp.__args__
            if not isinstance(value, (list, tuple)):
                value = [value]
            return tuple(_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return tp(value)
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if tp is float:
            f = float(value)
            if not math.isfinite(f):
                raise ValueError
            return f
        if tp is int:
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if tp is str:
            return "" if value is None else str(value)
    except (ValueError, TypeError):
        pass
    else:
        return value
    choices = ""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = f" (one of: {', '.join(m.value for m in tp)})"
    raise SuiteError(
        f"Invalid value {value!r} for {where}: expected {getattr(tp, '__name__', tp)}{choices}.",
        "Fix that line of the study file.",
    )


PRESETS_DIR = Path(__file__).parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_study(path_or_preset: str | Path | None) -> StudyConfig:
    """Load a study from a YAML file, or a built-in preset by name (default ``mini``)."""
    name = str(path_or_preset) if path_or_preset else "mini"
    path = Path(name)
    if not path.exists():
        preset = PRESETS_DIR / f"{name}.yaml"
        if preset.exists():
            path = preset
        elif name.endswith((".yaml", ".yml")) or "/" in name:
            raise SuiteError(
                f"Study file {name} does not exist.",
                "Pass the path of a YAML study file, or a preset name: "
                + ", ".join(list_presets()) + ".",
            )
        else:
            raise SuiteError(
                f"Unknown study preset {name!r}.",
                "Use one of: " + ", ".join(list_presets()) + ", or a path to a YAML file.",
            )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SuiteError(
            f"Study file {path} is not valid YAML{at}: {getattr(e, 'problem', e)}.",
            "Fix the syntax (indentation, colons, quotes) and run again.",
        ) from None
    if data is None:
        data = {}
    cfg = from_dict(StudyConfig, data, where=f"study {path.name}")
    validate_study(cfg)
    return cfg


def validate_study(cfg: StudyConfig) -> None:
    """Checks that need no data: names, grids, uniqueness."""
    if not cfg.models:
        raise SuiteError(f"Study {cfg.name!r} lists no models.", "Add at least one under models:.")
    names = [m.name for m in cfg.models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SuiteError(f"Model name(s) {', '.join(dup)} appear twice in study {cfg.name!r}.",
                         "Give every model a unique name.")
    if not cfg.datasets:
        raise SuiteError(f"Study {cfg.name!r} lists no datasets.",
                         "Add at least one under datasets:.")
    if not cfg.settings:
        raise SuiteError(f"Study {cfg.name!r} lists no settings.",
                         "Use any of: logistic, finetune, scratch.")
    if any(v <= 0 for v in cfg.l2_grid):
        raise SuiteError("l2_grid values must be positive.", "Remove zero or negative values.")
    unknown = [e for e in cfg.estimators if e not in ESTIMATOR_NAMES]
    if unknown:
        raise SuiteError(f"Unknown estimator(s) {', '.join(unknown)} in study {cfg.name!r}.",
                         f"Use any of: {', '.join(ESTIMATOR_NAMES)}, or [] for none.")


def study_to_yaml(cfg: StudyConfig) -> str:
    """The study as YAML (enums as their values), loadable by :func:`load_study`."""

    def plain(x: Any) -> Any:
        if isinstance(x, enum.Enum):
            return x.value
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return yaml.safe_dump(plain(asdict(cfg)), sort_keys=False)


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)


__all__ = [
    "PAPER_L2_GRID", "ESTIMATOR_NAMES", "Setting", "Executor", "SlurmOptions", "ProbeBackend",
    "ProbeSearch",
    "Decoder", "Launcher",
    "ModelConfig", "PretrainConfig", "FinetuneConfig", "ProbeConfig", "GridOptions",
    "AnalysisConfig", "StudyConfig", "flatten",
    "from_dict", "load_study", "validate_study", "study_to_yaml", "list_presets", "replace",
    "field",
]
