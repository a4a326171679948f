"""``local``: ``--jobs N`` worker processes on this machine, one cell at a time each.

Each worker slot holds a long-lived :mod:`suite.executors.worker` process that runs the command
of :func:`suite.executors.base.worker_command` for one cell after another (one Python start-up
and import per worker, not per cell), each cell's output in
``<workspace>/logs/<study>/<cell label>.log``. On a machine with GPUs, worker slot ``i`` sees
only GPU ``i mod #GPUs`` (``CUDA_VISIBLE_DEVICES``); on CPU, the cores are split between the
workers (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = cores // N, at least 1;
``SUITE_WORKER_THREADS`` overrides it), since N processes each using every core run slower than
one. A worker that dies (killed, out of memory) fails its cell's attempt and is replaced.

A worker outlives a killed driver: it keeps its claim and finishes its cell, then ends (its
input is closed), and a restarted driver waits for it like any other live claim.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from suite import cells, tracking
from suite.config import StudyConfig
from suite.executors.base import suite_args, write_study_file
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


class _Worker:
    """One slot's long-lived worker process and the reader of its answers."""

    def __init__(self, slot: int, env: dict[str, str], log: Path, done: queue.Queue) -> None:
        self.slot = slot
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "suite.executors.worker", "--", *suite_args()],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=f, env=env, text=True,
                bufsize=1)
        self.key = ""  # the cell in hand
        self.done = done
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            key, code = line.rstrip("\n").split("\t")
            self.done.put((self, key, int(code)))
        self.proc.wait()
        self.done.put((self, None, self.proc.returncode))  # the process is gone

    def send(self, study_file: Path, key: str, log: Path) -> None:
        self.key = key
        self.proc.stdin.write(f"{study_file}\t{key}\t{log}\n")
        self.proc.stdin.flush()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass


class LocalExecutor:
    def __init__(self, jobs: int = 1, **_: object) -> None:
        self.slots = max(1, int(jobs))
        self.gpus = _gpu_count()
        self.workers: dict[int, _Worker] = {}
        self.busy: dict[str, _Worker] = {}  # cell key -> the worker running it
        self.answers: queue.Queue = queue.Queue()
        self.ended: list[tuple[str, int]] = []

    def in_flight(self) -> dict[str, str]:
        return {k: str(w.proc.pid) for k, w in self.busy.items()}

    def env_for(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        threads = os.environ.get(ENV_THREADS) or str(max(1, _cores() // self.slots))
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
        env["SUITE_PROGRESS"] = "0"
        return env

    def _worker(self, slot: int) -> _Worker:
        w = self.workers.get(slot)
        if w is None or not w.alive:
            w = self.workers[slot] = _Worker(slot, self.env_for(slot), w_log(slot),
                                             self.answers)
        return w

    def submit(self, cfg: StudyConfig, cell: cells.Cell) -> None:
        used = {w.slot for w in self.busy.values()}
        slot = min(set(range(self.slots)) - used)
        log = (tracking.current().workspace / "logs" / tracking.safe_name(cfg.name)
               / f"{tracking.safe_name(cell.label)}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        w = self._worker(slot)
        try:
            w.send(write_study_file(cfg), cell.key, log)
        except OSError:  # it ended just now (its cell limit): a new one takes the cell
            del self.workers[slot]
            w = self._worker(slot)
            w.send(write_study_file(cfg), cell.key, log)
        self.busy[cell.key] = w
        console.print(f"started {cell.label} (worker {slot}, pid {w.proc.pid})")

    def _drain(self, timeout: float) -> None:
        try:
            item = self.answers.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            w, key, code = item
            if key is None:  # the process ended: its cell in hand (if any) ended with it
                if self.busy.get(w.key) is w:
                    del self.busy[w.key]
                    self.ended.append((w.key, code if code else 1))
            elif self.busy.get(key) is w:
                del self.busy[key]
                w.key = ""
                self.ended.append((key, code))
            try:
                item = self.answers.get_nowait()
            except queue.Empty:
                return

    def collect(self) -> list[tuple[str, int]]:
        self._drain(0)
        ended, self.ended = self.ended, []
        return ended

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.ended and time.monotonic() < deadline:
            self._drain(min(0.5, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        """End the idle workers (their input closed); a busy one finishes its cell first."""
        for w in self.workers.values():
            w.close()
        for w in self.workers.values():
            if not self.busy or w not in self.busy.values():
                try:
                    w.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass


def w_log(slot: int) -> Path:
    """A worker's own output (start-up, anything outside a cell)."""
    return tracking.current().workspace / "logs" / f"worker-{slot}.log"
