"""Launching is separate from computing: run a stage as an MLflow Project.

``suite pretrain`` / ``suite finetune`` (and a study with ``launcher: project``) call
:func:`launch_project`, which runs ``projects/<stage>/MLproject`` with ``mlflow.projects.run``.
The project's entry point is ``python -m suite <stage> --local ...``: the same package code the
in-process path calls. The launcher only passes parameters and the tracking URI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from suite import tracking
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


def launch_project(stage: str, params: dict[str, object], study: str) -> str:
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
            uri, entry_point="main", parameters={k: _param(v) for k, v in params.items()},
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
