"""Claims: at most one worker runs a cell at a time, whatever runs concurrently.

Before a worker runs a cell it **claims** it in MLflow, the only state all workers share:

- it creates a *claim run* in the study's experiment (or adopts the one its SLURM job was
  launched under through MLflow Projects, :mod:`suite.executors.slurm`), RUNNING, tagged
  ``suite.stage=claim``,
  ``suite.claim_cell`` (the cell's ``suite.cell`` key), ``suite.claim`` (its owner,
  ``host:pid:uuid``), ``suite.heartbeat`` (Unix seconds, refreshed by a daemon thread every
  :data:`HEARTBEAT_S` seconds) and, inside a SLURM job, ``suite.slurm_job``;
- it then lists the RUNNING claims of the cell. The earliest *live* one wins (start time, then
  run id: every claimant computes the same order from the same rows). A claimant that is not the
  winner marks its own claim KILLED (tag ``suite.claim_lost`` names the winner) and backs off
  (:class:`ClaimLost`);
- a claim is *stale* when its heartbeat is older than the timeout (:data:`STALE_S`, env
  ``SUITE_CLAIM_TIMEOUT_S``), when its owner ran on this host and its pid is gone, or when its
  SLURM job is no longer queued or running (``squeue``); a claim made at submission (owner
  ``queued``) is live while its job waits in the queue. A stale claim is marked KILLED, with
  the stage runs it left RUNNING (runs tagged with the cell and their nested children), and the
  cell is taken over;
- the winner runs the cell; its claim ends FINISHED, or FAILED with a one-line ``suite.error``
  tag (KILLED on Ctrl-C). A SIGKILLed worker leaves its claim RUNNING with a heartbeat that
  stops: the next claimant finds it stale, so no run stays RUNNING after a rerun.

Why a separate, lightweight claim run rather than the stage's own run: the claim must exist
before the stage decides anything (before it loads data, looks up the registry or creates its
run, and the fine-tune stage creates a run per grid point and a parent), and it must record
failures the stage never reaches (a dataset that does not load). Keeping the stage runs exactly as
they were keeps their ``suite.cell`` keys, so finished runs of existing studies are still found
and the analysis (which reads stage runs only) is unchanged. The claim run carries the cell key
under its own tag (``suite.claim_cell``, not ``suite.cell``), so it is never mistaken for a
result.

Registration is covered too: the pretrain and zoo stages look the cell up in the registry before
training, and only the claim holder gets that far, so no version is registered twice.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from suite import tracking

STAGE = "claim"
TAG_CLAIM_CELL = "suite.claim_cell"
TAG_CLAIM_KIND = "suite.claim_kind"
TAG_CLAIM_LABEL = "suite.claim_label"
TAG_OWNER = "suite.claim"
TAG_HEARTBEAT = "suite.heartbeat"
TAG_SLURM_JOB = "suite.slurm_job"
TAG_ERROR = "suite.error"
TAG_LOST = "suite.claim_lost"
QUEUED = "queued"  # the owner of a claim made at submission, before its job started
HEARTBEAT_S = 5.0  # how often a holder refreshes its heartbeat
STALE_S = 60.0  # a heartbeat older than this marks the claim stale (12 missed beats)
ENV_TIMEOUT = "SUITE_CLAIM_TIMEOUT_S"
ENV_HEARTBEAT = "SUITE_CLAIM_HEARTBEAT_S"
_HOST = socket.gethostname()


class ClaimLost(Exception):
    """Another live worker holds the cell: this one backed off."""

    def __init__(self, cell: str, owner: str) -> None:
        super().__init__(f"cell {cell} is held by {owner}")
        self.cell, self.owner = cell, owner


def stale_after() -> float:
    return float(os.environ.get(ENV_TIMEOUT, STALE_S))


def heartbeat_every() -> float:
    return float(os.environ.get(ENV_HEARTBEAT, min(HEARTBEAT_S, stale_after() / 4)))


def make_owner() -> str:
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class ClaimInfo:
    """One claim run as the driver and ``suite study status`` see it."""

    run_id: str
    cell: str
    kind: str
    label: str
    owner: str
    status: str  # MLflow run status
    start_time: int  # ms
    end_time: int  # ms, 0 while running
    heartbeat: float
    slurm_job: str
    error: str

    @classmethod
    def of(cls, run) -> ClaimInfo:
        t = run.data.tags
        try:
            beat = float(t.get(TAG_HEARTBEAT, "0"))
        except ValueError:
            beat = 0.0
        return cls(run.info.run_id, t.get(TAG_CLAIM_CELL, ""), t.get(TAG_CLAIM_KIND, ""),
                   t.get(TAG_CLAIM_LABEL, ""), t.get(TAG_OWNER, ""), run.info.status,
                   int(run.info.start_time or 0), int(run.info.end_time or 0), beat,
                   t.get(TAG_SLURM_JOB, ""), t.get(TAG_ERROR, ""))


def list_claims(study: str, cell: str | None = None, running_only: bool = False) -> list[ClaimInfo]:
    """Claim runs of a study (one cell's, or all), oldest first."""
    filters = [f"tags.`{tracking.TAG_STAGE}` = '{STAGE}'"]
    if cell:
        filters.append(f"tags.`{TAG_CLAIM_CELL}` = '{cell}'")
    if running_only:
        filters.append("attributes.status = 'RUNNING'")
    runs = tracking.client().search_runs([tracking.experiment_id(study)],
                                         filter_string=" and ".join(filters),
                                         max_results=50000)
    return sorted((ClaimInfo.of(r) for r in runs), key=lambda c: (c.start_time, c.run_id))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    # A zombie (killed, not yet reaped by its parent) is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def slurm_job_alive(job: str) -> bool | None:
    """True/False when ``squeue`` can tell whether a job is still queued or running; None
    when it cannot (no SLURM client here, controller unreachable)."""
    if not job or shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # "Invalid job id specified": the controller forgot it (finished long ago).
        return False if "Invalid job id" in out.stderr else None
    states = out.stdout.split()
    return any(s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED",
                     "SUSPENDED", "RESIZING") for s in states)


def stale_reason(c: ClaimInfo, now: float | None = None) -> str:
    """Why a RUNNING claim is stale ("" when it is live)."""
    now = time.time() if now is None else now
    host, _, rest = c.owner.partition(":")
    pid = rest.partition(":")[0]
    if host == _HOST and pid.isdigit() and not _pid_alive(int(pid)):
        return f"its process {pid} on {host} is gone"
    if c.slurm_job:
        alive = slurm_job_alive(c.slurm_job)
        if alive is False:
            return f"its SLURM job {c.slurm_job} is gone"
        if alive and c.owner == QUEUED:
            return ""  # submitted, waiting in the queue: no heartbeat yet
    age = now - (c.heartbeat or c.start_time / 1000.0)
    if age > stale_after():
        return f"no heartbeat for {age:.0f} s"
    return ""


def kill_stale(study: str, c: ClaimInfo, reason: str) -> None:
    """Mark a stale claim KILLED, with the stage runs of its cell it left RUNNING."""
    cl = tracking.client()
    with contextlib.suppress(Exception):  # another claimant may be doing the same
        cl.set_tag(c.run_id, "suite.claim_stale", reason[:4900])
    cl.set_terminated(c.run_id, "KILLED")
    exp = tracking.experiment_id(study)
    orphans = cl.search_runs(
        [exp], filter_string=f"tags.`{tracking.TAG_CELL}` = '{c.cell}' and "
                             "attributes.status = 'RUNNING'", max_results=1000)
    for run in orphans:
        children = cl.search_runs(
            [exp], filter_string=f"tags.`{tracking.TAG_PARENT_RUN}` = '{run.info.run_id}' "
                                 "and attributes.status = 'RUNNING'", max_results=10000)
        for child in children:
            cl.set_terminated(child.info.run_id, "KILLED")
        cl.set_terminated(run.info.run_id, "KILLED")


class _Heartbeat(threading.Thread):
    def __init__(self, run_id: str) -> None:
        super().__init__(daemon=True, name="suite-claim-heartbeat")
        self.run_id, self.stop = run_id, threading.Event()

    def run(self) -> None:
        cl = tracking.client()
        while not self.stop.wait(heartbeat_every()):
            # A missed beat (server briefly away) is retried on the next one; the timeout is
            # several beats long.
            with contextlib.suppress(Exception):
                cl.set_tag(self.run_id, TAG_HEARTBEAT, f"{time.time():.3f}")


def one_line(exc: BaseException) -> str:
    """An exception as the one line ``suite study status`` prints."""
    from suite.errors import SuiteError

    if isinstance(exc, SuiteError):
        text = str(exc.problem if hasattr(exc, "problem") else exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500]


def claim_tags(study: str, cell: str, kind: str = "", label: str = "",
               owner: str = QUEUED) -> dict[str, str]:
    """The tags of a claim run; ``owner=QUEUED`` for a claim made at submission (a SLURM job
    launched through MLflow Projects: the launched run is the claim, adopted by the worker)."""
    tags = {tracking.TAG_STUDY: study, tracking.TAG_STAGE: STAGE, TAG_CLAIM_CELL: cell,
            TAG_CLAIM_KIND: kind, TAG_CLAIM_LABEL: label, TAG_OWNER: owner}
    if owner != QUEUED:
        tags[TAG_HEARTBEAT] = f"{time.time():.3f}"
    return tags


def _adopt_launched(cl, cell: str) -> str | None:
    """The run MLflow Projects launched this worker under (``MLFLOW_RUN_ID``), when it is a
    RUNNING claim of ``cell`` made at submission; the variable goes either way it is a claim,
    so that the stage's own runs do not resume it."""
    rid = os.environ.get("MLFLOW_RUN_ID")
    if not rid:
        return None
    try:
        run = cl.get_run(rid)
    except Exception:
        return None
    t = run.data.tags
    if t.get(tracking.TAG_STAGE) != STAGE:
        return None  # a stage's launched run (projects/pretrain, projects/finetune)
    os.environ.pop("MLFLOW_RUN_ID", None)
    if t.get(TAG_CLAIM_CELL) != cell or run.info.status != "RUNNING":
        return None  # killed as stale while queued, or a requeued job's old claim: claim anew
    return rid


@contextlib.contextmanager
def claim(study: str, cell: str, *, kind: str = "", label: str = "") -> Iterator[ClaimInfo]:
    """Hold ``cell`` for the body (module docstring); raises :class:`ClaimLost` when another
    live worker holds it. The claim ends FINISHED if the body returns, FAILED (with
    ``suite.error``) if it raises, KILLED on Ctrl-C."""
    cl = tracking.client()
    exp = tracking.experiment_id(study)
    tags = claim_tags(study, cell, kind, label, owner=make_owner())
    if os.environ.get("SLURM_JOB_ID"):
        tags[TAG_SLURM_JOB] = os.environ["SLURM_JOB_ID"]
    mine = _adopt_launched(cl, cell)
    if mine is not None:
        for k, v in tags.items():
            cl.set_tag(mine, k, v)
    else:
        mine = cl.create_run(exp, run_name=f"claim {label or cell}", tags=tags).info.run_id
    beat = _Heartbeat(mine)
    beat.start()
    status = "FAILED"
    try:
        while True:
            live = [c for c in list_claims(study, cell, running_only=True) if c.run_id != mine]
            me = ClaimInfo.of(cl.get_run(mine))
            ahead = [c for c in live if (c.start_time, c.run_id) < (me.start_time, me.run_id)]
            stale = [(c, r) for c in ahead if (r := stale_reason(c))]
            for c, reason in stale:
                kill_stale(study, c, reason)
            if len(stale) == len(ahead):
                break  # nothing live ahead of us: the cell is ours
            winner = next(c for c in ahead if all(c is not s for s, _ in stale))
            cl.set_tag(mine, TAG_LOST, winner.owner)
            status = "KILLED"
            raise ClaimLost(cell, winner.owner)
        try:
            yield me
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except ClaimLost:
            status = "KILLED"
            raise
        except BaseException as e:
            with contextlib.suppress(Exception):
                cl.set_tag(mine, TAG_ERROR, one_line(e))
            raise
        status = "FINISHED"
    finally:
        beat.stop.set()
        beat.join(timeout=10)
        cl.set_terminated(mine, status)


__all__ = ["ClaimInfo", "ClaimLost", "claim", "kill_stale", "list_claims", "stale_reason"]
