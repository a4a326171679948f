"""The driver loop every executor shares, and the worker command they all run.

The driver (``suite study run``) is stateless: each round it re-reads every cell's state from
MLflow (:func:`suite.cells.states`), asks the executor which cells it has in flight, and submits
ready cells (``pending``: dependencies done, no live claim) up to the executor's slots. Whether a
cell runs is decided by its claim (:mod:`suite.claims`), not by the driver, so drivers can be
killed, restarted, or run several at once on one study. A worker runs one cell::

    python -m suite --workspace WS [--tracking-uri URI] -q study work STUDY_FILE --cell KEY

(:func:`worker_command`), where ``STUDY_FILE`` is the resolved study written into the workspace
(:func:`write_study_file`); the same command runs in a SLURM job, or cell after cell in a
long-lived local worker (:mod:`suite.executors.worker`).
Exit codes: 0 done (or already done), :data:`EXIT_CLAIM_LOST` another worker holds the cell,
2 a user error, anything else a failure (the claim says why: ``suite.error``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from suite import cells, tracking
from suite.config import StudyConfig, study_to_yaml
from suite.errors import SuiteError
from suite.progress import console

EXIT_CLAIM_LOST = 3
MAX_ATTEMPTS = 2  # worker exits without a result before the driver gives up on a cell
# Submissions of one cell by one driver, whatever their outcome (a claim lost to a worker that
# later died is a legitimate resubmission); beyond this something keeps the cell from finishing.
MAX_SUBMISSIONS = 5
POLL_S = 2.0


class Executor(Protocol):
    """What the driver needs from an executor."""

    slots: int  # how many cells it may have in flight at once

    def in_flight(self) -> dict[str, str]:
        """Cells submitted and not yet over: key -> where (pid, SLURM job id)."""

    def submit(self, cfg: StudyConfig, cell: cells.Cell) -> object | None:
        """Start running ``cell`` (an in-process executor runs it to the end here and returns
        the stage's result)."""

    def collect(self) -> list[tuple[str, int | None]]:
        """Cells whose worker ended since the last call: (key, exit code, None when unknown)."""

    def wait(self, seconds: float) -> None:
        """Sleep until something may have changed."""


@dataclass
class Driver:
    """What one ``suite study run`` did."""

    ran: list[str] = field(default_factory=list)  # labels of cells this driver ran
    reused: list[str] = field(default_factory=list)  # done before this driver got to them
    failed: dict[str, str] = field(default_factory=dict)  # label -> error line
    final: list[cells.CellState] = field(default_factory=list)
    results: dict[str, object] = field(default_factory=dict)  # label -> stage result (inprocess)


def study_file(cfg: StudyConfig) -> Path:
    text = study_to_yaml(cfg)
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    name = f"{tracking.safe_name(cfg.name)}-{digest}.yaml"
    return tracking.current().workspace / "studies" / name


def write_study_file(cfg: StudyConfig) -> Path:
    """The resolved study (overrides applied) as YAML in the workspace, for workers to load.
    Written atomically: a worker never reads half a file."""
    path = study_file(cfg)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(study_to_yaml(cfg))
        os.replace(tmp, path)
    return path


def suite_args() -> list[str]:
    """The global options of the worker command: this workspace and tracking server, quiet."""
    tr = tracking.current()
    args = ["--workspace", str(tr.workspace), "-q"]
    if not tr.embedded:
        args += ["--tracking-uri", tr.tracking_uri]
    return args


def worker_command(study_path: Path, key: str) -> list[str]:
    """The command that runs one cell (module docstring), with this interpreter."""
    return [sys.executable, "-m", "suite", *suite_args(), "study", "work", str(study_path),
            "--cell", key]


def drive(cfg: StudyConfig, executor: Executor, *, analysis: bool = True,
          poll: float = POLL_S) -> Driver:
    """Run every cell of the study that is not done, through ``executor``, until none is left
    that can run. Raises :class:`SuiteError` naming the failed cells at the end, if any."""
    since = time.time()
    out = Driver()
    attempts: dict[str, int] = {}  # worker exits without a result, per cell key
    submitted: dict[str, int] = {}
    first = True
    try:
        while True:
            sts = [s for s in cells.states(cfg, since=since)
                   if analysis or s.cell.kind is not cells.Kind.analysis]
            if first:
                out.reused = [s.cell.label for s in sts if s.state is cells.State.done]
                first = False
            for s in sts:
                if s.state is cells.State.failed and s.cell.label not in out.failed:
                    out.failed[s.cell.label] = (s.claim.error if s.claim else "") or "failed"
            for key, code in executor.collect():
                label = next((s.cell.label for s in sts if s.cell.key == key), key)
                if code is None:  # ended; its claim tells the outcome
                    continue
                if code == 0:
                    console.print(f"[green]done[/] {label}")
                elif code != EXIT_CLAIM_LOST:
                    attempts[key] = attempts.get(key, 0) + 1
                    console.print(f"[red]worker failed[/] {label} (exit {code})")
            flying = executor.in_flight()
            ready = [s for s in sts if s.state is cells.State.pending and s.cell.key not in flying
                     and attempts.get(s.cell.key, 0) < MAX_ATTEMPTS
                     and submitted.get(s.cell.key, 0) < MAX_SUBMISSIONS]
            free = executor.slots - len(flying)
            for s in ready[:max(0, free)]:
                if s.stale:
                    console.print(f"taking over {s.cell.label}: its claim is stale ({s.stale})")
                out.ran.append(s.cell.label)
                submitted[s.cell.key] = submitted.get(s.cell.key, 0) + 1
                result = executor.submit(cfg, s.cell)
                if result is not None:
                    out.results[s.cell.label] = result
            running = [s for s in sts if s.state is cells.State.running]
            if not ready and not flying and not running:
                break
            if not ready or free <= 0:
                executor.wait(poll)
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()
    out.final = sts
    for s in sts:
        if (s.state is not cells.State.done and s.cell.key in {**attempts, **submitted}
                and s.cell.label not in out.failed):
            out.failed[s.cell.label] = "its worker exited without a result (see its log)"
    if out.failed:
        lines = "; ".join(f"{k}: {v}" for k, v in out.failed.items())
        raise SuiteError(
            f"Study {cfg.name!r}: {len(out.failed)} cell(s) failed ({lines}).",
            f"`suite study status {cfg.name}` lists them with their errors; fix the cause and "
            "run the study again: it resumes, retrying only what is not done.")
    return out
