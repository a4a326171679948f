"""``local``: ``--jobs N`` worker processes on this machine, one cell each.

Each worker is the command of :func:`suite.executors.base.worker_command` in a subprocess, its
output in ``<workspace>/logs/<study>/<cell label>.log``. On a machine with GPUs, worker slot
``i`` sees only GPU ``i mod #GPUs`` (``CUDA_VISIBLE_DEVICES``); on CPU, the cores are split
between the workers (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = cores // N, at least 1;
``SUITE_WORKER_THREADS`` overrides it), since N processes each using every core run slower than one.

A worker outlives a killed driver: it keeps its claim and finishes its cell, and a restarted
driver waits for it like any other live claim.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from suite import cells, tracking
from suite.config import StudyConfig
from suite.executors.base import worker_command, write_study_file
from suite.progress import console


ENV_THREADS = "SUITE_WORKER_THREADS"  # overrides the split (threads per worker)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


class LocalExecutor:
    def __init__(self, jobs: int = 1, **_: object) -> None:
        self.slots = max(1, int(jobs))
        self.gpus = _gpu_count()
        self.procs: dict[str, tuple[subprocess.Popen, int, Path]] = {}  # key -> (proc, slot, log)

    def in_flight(self) -> dict[str, str]:
        return {k: str(p.pid) for k, (p, _, _) in self.procs.items()}

    def env_for(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        threads = os.environ.get(ENV_THREADS) or str(max(1, _cores() // self.slots))
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
        env["SUITE_PROGRESS"] = "0"
        return env

    def submit(self, cfg: StudyConfig, cell: cells.Cell) -> None:
        used = {slot for _, slot, _ in self.procs.values()}
        slot = min(set(range(self.slots)) - used)
        log = (tracking.current().workspace / "logs" / tracking.safe_name(cfg.name)
               / f"{tracking.safe_name(cell.label)}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            proc = subprocess.Popen(worker_command(write_study_file(cfg), cell.key),
                                    stdout=f, stderr=subprocess.STDOUT, env=self.env_for(slot),
                                    stdin=subprocess.DEVNULL)
        self.procs[cell.key] = (proc, slot, log)
        console.print(f"started {cell.label} (worker {slot}, pid {proc.pid})")

    def collect(self) -> list[tuple[str, int]]:
        ended = [(k, p.returncode) for k, (p, _, _) in self.procs.items()
                 if p.poll() is not None]
        for k, _ in ended:
            del self.procs[k]
        return ended

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p, _, _ in self.procs.values()):
                return
            time.sleep(0.1)
