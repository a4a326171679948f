"""``slurm``: each ready cell is one SLURM job, launched through MLflow Projects.

The driver runs the ``main`` entry point of ``projects/cell`` (the worker command,
:func:`suite.executors.base.worker_command`: ``suite study work STUDY_FILE --cell KEY``) with
``mlflow.projects.run(..., backend="suite-slurm", env_manager="local", synchronous=False)``:
the project's own SLURM backend (:mod:`suite.executors.slurm_backend`, an MLflow plugin)
creates the project run and submits its command with ``sbatch``. That run *is* the cell's claim
(:mod:`suite.claims`): it is created at submission with the claim's tags (owner ``queued``),
tagged with the job id, and adopted by the worker when the job starts (``MLFLOW_RUN_ID``), so a
queued cell already counts as running for every other driver, and a cancelled queued job leaves
a claim that is stale as soon as the job has left the queue.

The job uses the submitting interpreter (the project's virtualenv must be visible on the
compute nodes at the same path, as must the workspace: it holds the study file and the job
logs, ``<workspace>/logs/<study>/slurm-<job>.out``) and exports the submitting environment.
Resources come from the study's ``slurm:`` block (:class:`~suite.config.SlurmOptions`):
partition, GPUs and CPUs per job, time limit, extra ``sbatch`` options; ``--max-concurrent``
caps the jobs queued or running at once. They never enter a cell's key.

Jobs are named ``suite-<cell key>``; the driver finds its jobs in flight by name with
``squeue``, so a restarted driver sees what an earlier one submitted. A claim whose job has
left the queue is stale and taken over (:func:`suite.claims.stale_reason`), which covers
preempted, cancelled and timed-out jobs; a requeued job claims again like any worker.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time

from suite import cells, tracking
from suite.config import SlurmOptions, StudyConfig
from suite.errors import SuiteError
from suite.executors.base import write_study_file
from suite.executors.slurm_backend import sbatch_options
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
    """The ``sbatch`` call that submits ``command`` as one job (what the suite-slurm backend
    runs for a cell, given here whole for reading and for tests)."""
    cmd = ["sbatch", "--parsable", f"--job-name={job_name}", f"--output={log}",
           "--export=ALL", "--ntasks=1"]
    return cmd + sbatch_options(opts) + ["--wrap", shlex.join(command)]


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
        import mlflow.projects

        from suite import claims
        from suite.launch import projects_dir

        logs = tracking.current().workspace / "logs" / tracking.safe_name(cfg.name)
        logs.mkdir(parents=True, exist_ok=True)
        env = {"SUITE_PROGRESS": "0"}
        if self.opts.cpus_per_job:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.opts.cpus_per_job)
        config = {"sbatch": sbatch_options(self.opts), "job_name": f"{JOB_PREFIX}{cell.key}",
                  "output": str(logs / "slurm-%j.out"), "env": env,
                  "run_name": f"claim {cell.label}",
                  "run_tags": claims.claim_tags(cfg.name, cell.key, cell.kind.value,
                                                cell.label)}
        params = {"workspace": str(tracking.current().workspace),
                  "study_file": str(write_study_file(cfg)), "cell": cell.key}
        submitted = mlflow.projects.run(
            str(projects_dir() / "cell"), entry_point="main", parameters=params,
            experiment_id=tracking.experiment_id(cfg.name), backend="suite-slurm",
            backend_config=config, env_manager="local", synchronous=False)
        self.mine[cell.key] = submitted.job
        console.print(f"submitted {cell.label} (SLURM job {submitted.job}, MLflow run "
                      f"{submitted.run_id})")

    def collect(self) -> list[tuple[str, int | None]]:
        # A job's outcome is read from its claim (the driver's next round), not from SLURM.
        queued = queued_jobs()
        ended = [k for k in self.mine if k not in queued]
        for k in ended:
            del self.mine[k]
        return [(k, None) for k in ended]

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)
