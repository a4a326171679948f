"""Executors: where a study's ready cells run (:mod:`suite.executors.base` has the driver loop).

One module per executor, chosen from :data:`EXECUTORS` by :class:`~suite.config.Executor`.
"""

from __future__ import annotations

from suite.config import Executor
from suite.executors.base import Driver, drive, worker_command, write_study_file
from suite.executors.inprocess import InProcessExecutor
from suite.executors.local import LocalExecutor
from suite.executors.slurm import SlurmExecutor, sbatch_command

EXECUTORS = {
    Executor.inprocess: InProcessExecutor,
    Executor.local: LocalExecutor,
    Executor.slurm: SlurmExecutor,
}

__all__ = ["EXECUTORS", "Driver", "InProcessExecutor", "LocalExecutor", "SlurmExecutor",
           "drive", "sbatch_command", "worker_command", "write_study_file"]
