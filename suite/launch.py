"""Launching is separate from computing: run a stage as an MLflow Project.

``suite pretrain`` / ``suite finetune`` (and a study with ``launcher: project``) call
:func:`launch_pretrain` / :func:`launch_finetune`. Each first looks the cell up in MLflow (as the
in-process stage functions do) and, only when it is not complete, runs
``projects/<stage>/MLproject`` through :func:`launch_project` (``mlflow.projects.run``). The
project's entry point is ``python -m suite <stage> --local ...``: the same package code the
in-process path calls. The launcher only passes parameters and the tracking URI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from suite import tracking
from suite.config import FinetuneConfig, PretrainConfig
from suite.errors import SuiteError


def projects_dir() -> Path:
    """``projects/`` of the source tree (editable install) or the copy inside the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "projects", here.parent / "projects"):
        if (candidate / "pretrain" / "MLproject").exists():
            return candidate
    raise SuiteError(
        "The MLflow Projects folder (projects/) was not found next to the suite package.",
        "Install suite from its source tree (pip install -e .) or use --local to run in-process.",
    )


def launch_project(stage: str, params: dict[str, object], study: str,
                   entry_point: str = "main") -> str:
    """Run ``projects/<stage>`` synchronously in the study's experiment; return its run id.

    ``env_manager="local"`` runs ``python`` from ``PATH``, not ``sys.executable``, so the running
    interpreter's folder goes first on ``PATH`` for the child.
    """
    import mlflow.projects
    from mlflow.exceptions import ExecutionException

    uri = str(projects_dir() / stage)
    exp = tracking.experiment_id(study)
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + old_path
    try:
        submitted = mlflow.projects.run(
            uri, entry_point=entry_point, parameters={k: _param(v) for k, v in params.items()},
            experiment_id=exp, env_manager="local", synchronous=True,
        )
    except ExecutionException as e:
        raise SuiteError(
            f"The MLflow Project {stage} failed: {e}.",
            "Its output above names the cause; the failed run is marked FAILED in the UI and "
            "nothing completed before it was lost. Fix the cause and run again.",
        ) from None
    finally:
        os.environ["PATH"] = old_path
    return submitted.run_id


def _param(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    if hasattr(v, "value"):
        return str(v.value)
    return str(v)


def _flag(name: str, on: bool) -> str:
    """A boolean flag of the CLI as an MLproject parameter: ``--name`` or ``--no-name``. Its
    parameter is named ``<option>_flag``, so that the run's ``<option>`` param stays the
    config's True/False, as in-process."""
    return f"--{name}" if on else f"--no-{name}"


def pretrain_params(cfg: PretrainConfig) -> dict[str, object]:
    """MLproject parameters of projects/pretrain for a config."""
    m = cfg.model
    return {"name": m.name, "study": cfg.study, "arch": m.arch, "width": m.width,
            "depth": m.depth, "bn_scale": m.bn_scale, "label_smoothing": m.label_smoothing,
            "dropout": m.dropout, "aux_head": m.aux_head, "epochs": m.epochs,
            "source": cfg.source, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "weight_decay": cfg.weight_decay, "seed": cfg.seed,
            "registered_name": cfg.registered_name, "data_root": cfg.data_root,
            "device": cfg.device, "num_workers": cfg.num_workers,
            "skip_corrupt_flag": _flag("skip-corrupt", cfg.skip_corrupt)}


def finetune_params(cfg: FinetuneConfig) -> dict[str, object]:
    """MLproject parameters of projects/finetune for a config."""
    return {"model": cfg.model_name, "dataset": cfg.dataset, "setting": cfg.setting,
            "version": cfg.model_version, "study": cfg.study, "lrs": cfg.lrs,
            "wds": cfg.weight_decays, "steps": cfg.steps, "batch_size": cfg.batch_size,
            "eval_every": cfg.eval_every, "seed": cfg.seed, "data_root": cfg.data_root,
            "device": cfg.device, "num_workers": cfg.num_workers,
            "skip_corrupt_flag": _flag("skip-corrupt", cfg.skip_corrupt)}


def launch_point(cfg: FinetuneConfig) -> str:
    """Train one grid point as the ``point`` entry point of projects/finetune (the launched run
    is the point's run); returns its run id."""
    return launch_project("finetune", finetune_params(cfg), cfg.study, entry_point="point")


def launch_pretrain(cfg: PretrainConfig) -> tuple[str, str, bool]:
    """Pretrain as an MLflow Project unless a version with the same cell is registered;
    returns (registered name, version, reused) like the in-process path."""
    from suite.pretrain import pretrain_cell, registered_name_of

    name, cell = registered_name_of(cfg), pretrain_cell(cfg)
    mv = tracking.find_version_by_cell(name, cell)
    if mv is not None:
        return name, str(mv.version), True
    launch_project("pretrain", pretrain_params(cfg), cfg.study)
    return name, str(tracking.find_version_by_cell(name, cell).version), False


def launch_finetune(cfg: FinetuneConfig) -> tuple[str, bool]:
    """Fine-tune as an MLflow Project unless a FINISHED run with the same cell exists;
    returns (parent run id, reused) like the in-process path."""
    from suite.finetune import finetune_cell

    mv = tracking.get_version(cfg.model_name, cfg.model_version)
    done = tracking.find_finished_run(cfg.study, finetune_cell(cfg, mv))
    if done is not None:
        return done.info.run_id, True
    return launch_project("finetune", finetune_params(cfg), cfg.study), False
