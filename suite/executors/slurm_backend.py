"""``suite-slurm``: an MLflow Projects backend that runs an entry point as one SLURM job.

Registered under MLflow's plugin entry point group ``mlflow.project_backend`` (pyproject.toml),
so any MLflow project runs on SLURM with::

    mlflow.projects.run(uri, entry_point, parameters=..., backend="suite-slurm",
                        backend_config={"sbatch": [...], "job_name": ..., "output": ...},
                        env_manager="local", synchronous=False)

or ``mlflow run URI -b suite-slurm --backend-config config.json --env-manager local``. Like
MLflow's local backend it creates the project's run (``get_or_create_run``: the project's
source, entry point and parameters) and computes the entry point's command; it then submits the
command with ``sbatch --wrap`` from the project folder, with the run's environment
(``MLFLOW_RUN_ID``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_ID``) and this interpreter's folder
first on ``PATH`` (``env_manager`` must be ``local``: the job uses the submitting environment,
which the nodes must see at the same path), and tags the run ``suite.slurm_job``.

``backend_config``: ``sbatch`` (list of extra ``sbatch`` options: partition, GPUs, CPUs, time),
``job_name``, ``output`` (the job's log path, ``%j`` = job id), ``run_tags`` and ``run_name``
(set on the created run before submission), ``env`` (more environment variables for the job).

Why its own backend: ``mlflow-slurm`` 1.0.6 ignores ``--env-manager local``, fails on an MLproject
without ``python_env``, builds a virtualenv per job through pyenv (a download) and calls Lmod's
``module`` in its batch script (docs/scaleout.md); submitit would add a pickled-callable layer
where an entry point's command suffices. This backend keeps MLflow's own project, entry point
and run bookkeeping and leaves the queueing to SLURM.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mlflow.projects.backend.abstract_backend import AbstractBackend
from mlflow.projects.submitted_run import SubmittedRun

from suite.errors import SuiteError

TAG_SLURM_JOB = "suite.slurm_job"


def job_state(job: str) -> str:
    """SLURM's state of a job ("" once the controller has forgotten it)."""
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                         text=True, timeout=60)
    return out.stdout.strip().split("\n")[0] if out.returncode == 0 else ""


class SlurmSubmittedRun(SubmittedRun):
    """A project run submitted as SLURM job ``job``: its status is the MLflow run's."""

    def __init__(self, run_id: str, job: str) -> None:
        super().__init__()
        self._run_id, self.job = run_id, job

    @property
    def run_id(self) -> str:
        return self._run_id

    def wait(self) -> bool:
        while job_state(self.job):
            time.sleep(2)
        return self.get_status() == "FINISHED"

    def get_status(self) -> str:
        from mlflow.tracking import MlflowClient

        return MlflowClient().get_run(self._run_id).info.status

    def cancel(self) -> None:
        subprocess.run(["scancel", self.job], capture_output=True, timeout=60)


class SlurmProjectBackend(AbstractBackend):
    def run(self, project_uri, entry_point, params, version, backend_config, tracking_uri,
            experiment_id):
        from mlflow.projects.backend.local import PROJECT_ENV_MANAGER
        from mlflow.projects.utils import (
            fetch_and_validate_project,
            get_entry_point_command,
            get_or_create_run,
            get_run_env_vars,
            load_project,
        )
        from mlflow.tracking import MlflowClient

        cfg = backend_config or {}
        if cfg.get(PROJECT_ENV_MANAGER) not in (None, "local"):
            raise SuiteError(
                f"The suite-slurm backend runs jobs in the submitting environment; "
                f"env_manager={cfg.get(PROJECT_ENV_MANAGER)!r} is not supported.",
                "Pass env_manager='local' (mlflow run --env-manager local).")
        work_dir = fetch_and_validate_project(project_uri, version, entry_point, params)
        project = load_project(work_dir)
        run = get_or_create_run(None, project_uri, experiment_id, work_dir, version,
                                entry_point, params)
        rid = run.info.run_id
        client = MlflowClient()
        for k, v in (cfg.get("run_tags") or {}).items():
            client.set_tag(rid, k, v)
        if cfg.get("run_name"):
            client.set_tag(rid, "mlflow.runName", cfg["run_name"])
        command = " && ".join(get_entry_point_command(project, entry_point, params,
                                                      cfg.get("storage_dir")))
        env = {**os.environ, **get_run_env_vars(rid, experiment_id),
               **{k: str(v) for k, v in (cfg.get("env") or {}).items()}}
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        if tracking_uri:
            env["MLFLOW_TRACKING_URI"] = tracking_uri
        cmd = ["sbatch", "--parsable", "--export=ALL", "--ntasks=1",
               f"--chdir={work_dir}"]
        if cfg.get("job_name"):
            cmd.append(f"--job-name={cfg['job_name']}")
        if cfg.get("output"):
            cmd.append(f"--output={cfg['output']}")
        cmd += [str(o) for o in cfg.get("sbatch") or []]
        cmd += ["--wrap", command]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        if out.returncode != 0:
            client.set_terminated(rid, "FAILED")
            raise SuiteError(
                f"sbatch refused the job of {project.name or project_uri} ({entry_point}): "
                f"{out.stderr.strip() or out.stdout.strip()}.",
                "Check the sbatch options (partition, GPUs, time limit) against `sinfo`, and "
                "run again.")
        job = out.stdout.strip().split(";")[0]
        client.set_tag(rid, TAG_SLURM_JOB, job)
        return SlurmSubmittedRun(rid, job)


def sbatch_options(opts) -> list[str]:
    """A study's ``slurm:`` block (:class:`~suite.config.SlurmOptions`) as sbatch options."""
    cmd: list[str] = []
    if opts.partition:
        cmd.append(f"--partition={opts.partition}")
    if opts.gpus_per_job:
        cmd.append(f"--gres=gpu:{opts.gpus_per_job}")
    if opts.cpus_per_job:
        cmd.append(f"--cpus-per-task={opts.cpus_per_job}")
    if opts.time_limit:
        cmd.append(f"--time={opts.time_limit}")
    return cmd + list(opts.extra_sbatch)


__all__ = ["SlurmProjectBackend", "SlurmSubmittedRun", "sbatch_options"]
