"""Claims in MLflow: the earliest live claim wins, losers back off, stale claims are taken
over and marked KILLED, and a failure is recorded on the claim (real SQLite store, threads held
at a barrier so that they collide)."""

from __future__ import annotations

import threading
import time

import pytest

from suite import claims, tracking


def _status(run_id: str) -> str:
    return tracking.client().get_run(run_id).info.status


def test_concurrent_claimants_one_wins(store):
    n, ran, lost, errors = 4, [], [], []
    gate = threading.Barrier(n)

    def worker(i: int) -> None:
        try:
            gate.wait(timeout=30)
            with claims.claim("c", "cell-a", kind="probe", label="probe x"):
                ran.append(i)
                time.sleep(1.0)  # hold it while the others look
        except claims.ClaimLost as e:
            lost.append(e.owner)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a claimant hung"
    assert not errors
    assert len(ran) == 1 and len(lost) == n - 1
    rows = claims.list_claims("c", "cell-a")
    assert sorted(r.status for r in rows) == ["FINISHED"] + ["KILLED"] * (n - 1)
    winner = next(r for r in rows if r.status == "FINISHED")
    assert rows[0] == winner  # the earliest claim is the one that ran
    losers = [tracking.client().get_run(r.run_id).data.tags for r in rows[1:]]
    assert all(t[claims.TAG_LOST] == winner.owner for t in losers)


def _foreign_claim(study: str, cell: str, heartbeat: float) -> str:
    """A RUNNING claim as a worker on another host would leave it."""
    tags = {tracking.TAG_STUDY: study, tracking.TAG_STAGE: claims.STAGE,
            claims.TAG_CLAIM_CELL: cell, claims.TAG_OWNER: "elsewhere:4242:abcd",
            claims.TAG_HEARTBEAT: f"{heartbeat:.3f}"}
    return tracking.client().create_run(tracking.experiment_id(study), tags=tags).info.run_id


def test_live_foreign_claim_wins_and_stale_one_is_taken_over(store, monkeypatch):
    monkeypatch.setenv(claims.ENV_TIMEOUT, "3")
    other = _foreign_claim("c", "cell-b", time.time())
    # The stage run the other worker left RUNNING, with a nested child.
    exp = tracking.experiment_id("c")
    stage = tracking.client().create_run(exp, tags={tracking.TAG_CELL: "cell-b"}).info.run_id
    child = tracking.client().create_run(exp, tags={tracking.TAG_PARENT_RUN: stage}).info.run_id
    with pytest.raises(claims.ClaimLost):
        with claims.claim("c", "cell-b"):
            pytest.fail("ran while a live claim held the cell")
    assert _status(other) == "RUNNING"
    time.sleep(3.5)  # its heartbeat goes stale
    with claims.claim("c", "cell-b") as mine:
        assert _status(mine.run_id) == "RUNNING"
    assert _status(other) == "KILLED"
    assert "no heartbeat" in tracking.client().get_run(other).data.tags["suite.claim_stale"]
    assert _status(stage) == "KILLED" and _status(child) == "KILLED"
    assert _status(mine.run_id) == "FINISHED"


def test_claim_of_dead_local_process_is_stale_at_once(store):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    tags = {tracking.TAG_STUDY: "c", tracking.TAG_STAGE: claims.STAGE,
            claims.TAG_CLAIM_CELL: "cell-c", claims.TAG_OWNER: f"{claims._HOST}:{proc.pid}:x",
            claims.TAG_HEARTBEAT: f"{time.time():.3f}"}
    dead = tracking.client().create_run(tracking.experiment_id("c"), tags=tags).info.run_id
    with claims.claim("c", "cell-c"):
        pass
    assert _status(dead) == "KILLED"
    assert "is gone" in tracking.client().get_run(dead).data.tags["suite.claim_stale"]


def test_heartbeat_is_refreshed_and_failure_is_recorded(store, monkeypatch):
    monkeypatch.setenv(claims.ENV_HEARTBEAT, "0.2")
    with pytest.raises(RuntimeError):
        with claims.claim("c", "cell-d") as mine:
            first = mine.heartbeat
            time.sleep(1.0)
            beat = float(tracking.client().get_run(mine.run_id).data.tags[claims.TAG_HEARTBEAT])
            assert beat > first
            raise RuntimeError("the dataset\nwould not load")
    run = tracking.client().get_run(mine.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[claims.TAG_ERROR] == "RuntimeError: the dataset would not load"
