"""``slurm``: each ready cell is one SLURM job (``sbatch``) running the worker command.

The job runs :func:`suite.executors.base.worker_command` with the submitting interpreter (the
project's virtualenv must be visible on the compute nodes at the same path, as must the
workspace: it holds the study file and the job logs, ``<workspace>/logs/<study>/slurm-<job>.out``).
``sbatch`` exports the submitting environment (``MLFLOW_TRACKING_URI`` among it). Resources come
from the study's ``slurm:`` block (:class:`~suite.config.SlurmOptions`): partition, GPUs and
CPUs per job, time limit, extra ``sbatch`` options; ``--max-concurrent`` caps the jobs queued or
running at once. They never enter a cell's key.

Jobs are named ``suite-<cell key>``; the driver finds its jobs in flight by name with
``squeue``, so a restarted driver sees what an earlier one submitted. The worker tags its claim
with ``SLURM_JOB_ID`` (``suite.slurm_job``): a claim whose job has left the queue is stale and
taken over (:func:`suite.claims.stale_reason`), which covers preempted, cancelled and timed-out
jobs; a requeued job claims again like any worker.

Why plain ``sbatch`` rather than an MLflow Projects backend: ``mlflow-slurm`` ignores
``--env-manager local``, fails on an MLproject without ``python_env`` and calls Lmod
(docs/scaleout.md), and any Projects backend creates its own run for every submission before the
job starts, which would be a second, unclaimed record of the cell. The worker command is the
same one the local executor runs; ``projects/`` keeps the stage entry points for
``mlflow run`` and the Kubernetes backend.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time

from suite import cells, tracking
from suite.config import SlurmOptions, StudyConfig
from suite.errors import SuiteError
from suite.executors.base import worker_command, write_study_file
from suite.progress import console

JOB_PREFIX = "suite-"


def check_slurm() -> None:
    """Refuse what cannot work: no ``sbatch`` here, or a store the nodes cannot share."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise SuiteError(
            "--executor slurm needs the SLURM client commands (sbatch, squeue), and they are not "
            "on PATH.",
            "Run the study on a SLURM login node (or install slurm-client and point it at the "
            "cluster), or use --executor local --jobs N on this machine.")
    if not tracking.is_shared_store():
        raise SuiteError(
            f"A slurm study needs a tracking store every node can reach; "
            f"{tracking.redact(tracking.current_uri())} is a local file (SQLite must not be "
            "shared between nodes).",
            "Start a tracking server (`suite server start`, on PostgreSQL for many workers), "
            "export MLFLOW_TRACKING_URI=http://HOST:PORT it prints, and run again.")


def sbatch_command(opts: SlurmOptions, job_name: str, log: str, command: list[str]) -> list[str]:
    """The ``sbatch`` call that submits ``command`` as one job."""
    cmd = ["sbatch", "--parsable", f"--job-name={job_name}", f"--output={log}",
           "--export=ALL", "--ntasks=1"]
    if opts.partition:
        cmd.append(f"--partition={opts.partition}")
    if opts.gpus_per_job:
        cmd.append(f"--gres=gpu:{opts.gpus_per_job}")
    if opts.cpus_per_job:
        cmd.append(f"--cpus-per-task={opts.cpus_per_job}")
    if opts.time_limit:
        cmd.append(f"--time={opts.time_limit}")
    cmd += list(opts.extra_sbatch)
    return cmd + ["--wrap", shlex.join(command)]


def queued_jobs() -> dict[str, str]:
    """Jobs of this user named ``suite-<key>`` still queued or running: key -> job id."""
    out = subprocess.run(["squeue", "-h", "--me", "-O", "JobID:32,Name:200"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SuiteError(f"squeue failed: {out.stderr.strip() or out.stdout.strip()}.",
                         "Check that the SLURM controller is up (sinfo) and run again.")
    jobs: dict[str, str] = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].startswith(JOB_PREFIX):
            jobs[parts[1][len(JOB_PREFIX):]] = parts[0]
    return jobs


class SlurmExecutor:
    def __init__(self, max_concurrent: int = 0, slurm: SlurmOptions | None = None,
                 **_: object) -> None:
        check_slurm()
        self.slots = max_concurrent if max_concurrent > 0 else 1_000_000
        self.opts = slurm or SlurmOptions()
        self.mine: dict[str, str] = {}  # key -> job id, submitted by this driver

    def in_flight(self) -> dict[str, str]:
        return queued_jobs()

    def submit(self, cfg: StudyConfig, cell: cells.Cell) -> None:
        logs = tracking.current().workspace / "logs" / tracking.safe_name(cfg.name)
        logs.mkdir(parents=True, exist_ok=True)
        cmd = sbatch_command(self.opts, f"{JOB_PREFIX}{cell.key}", str(logs / "slurm-%j.out"),
                             worker_command(write_study_file(cfg), cell.key))
        env = dict(os.environ, SUITE_PROGRESS="0")
        if self.opts.cpus_per_job:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.opts.cpus_per_job)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        if out.returncode != 0:
            raise SuiteError(f"sbatch refused {cell.label}: {out.stderr.strip()}.",
                             "Check the study's slurm: options (partition, gpus_per_job, "
                             "time_limit, extra_sbatch) against `sinfo`, and run again.")
        job = out.stdout.strip().split(";")[0]
        self.mine[cell.key] = job
        console.print(f"submitted {cell.label} (SLURM job {job})")

    def collect(self) -> list[tuple[str, int | None]]:
        # A job's outcome is read from its claim (the driver's next round), not from SLURM.
        queued = queued_jobs()
        ended = [k for k in self.mine if k not in queued]
        for k in ended:
            del self.mine[k]
        return [(k, None) for k in ended]

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)
