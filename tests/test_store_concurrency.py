"""Concurrent first use of a fresh store: processes released at one instant (a barrier) each
configure the same new workspace and log a run. Without the store lock they race MLflow's
schema migration and leave the store unopenable; with it all succeed."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from suite import tracking

N_PROCS = 4

pytest_plugins = ("services",)


def _first_use(ws: str, tracking_uri: str | None, barrier, i: int, results) -> None:
    """One process: everything imported first, then released with the others at once."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SUITE_WORKSPACE"):
        os.environ.pop(var, None)
    import mlflow
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401 -- imports before the race
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    from suite import tracking as tr

    barrier.wait(timeout=300)
    try:
        tr.configure(workspace=ws, tracking_uri=tracking_uri)
        with tr.start_run("race", f"r{i}", tr.run_tags("race", "probe", cell=f"c{i}")):
            mlflow.log_metric("i", float(i))
        results.put((i, "ok"))
    except BaseException as e:  # noqa: BLE001 -- reported to the parent, which fails the test
        results.put((i, f"{type(e).__name__}: {e}"[:500]))


def _race(ws: Path, tracking_uri: str | None = None) -> dict[int, str]:
    ctx = mp.get_context("spawn")  # a clean interpreter each, as N `suite` commands would be
    barrier = ctx.Barrier(N_PROCS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_first_use, args=(str(ws), tracking_uri, barrier, i, results))
             for i in range(N_PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a process hung on the store"
    out = {}
    while not results.empty():
        i, msg = results.get()
        out[i] = msg
    return out


def _check_store(ws: Path, tracking_uri: str | None, monkeypatch) -> None:
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SUITE_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)
    tracking._CURRENT = None
    try:
        tracking.configure(workspace=ws, tracking_uri=tracking_uri)
        runs = tracking.search_runs("race")
        assert sorted(r.data.tags[tracking.TAG_CELL] for r in runs) == [
            f"c{i}" for i in range(N_PROCS)]
        assert tracking.client().search_registered_models() == []  # the registry opens too
    finally:
        tracking._CURRENT = None


@pytest.mark.slow
def test_concurrent_first_use_of_a_fresh_sqlite_store(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    results = _race(ws)
    assert results == {i: "ok" for i in range(N_PROCS)}
    _check_store(ws, None, monkeypatch)
    assert (ws / "mlflow.db.lock").exists()


@pytest.mark.slow
@pytest.mark.services
def test_concurrent_first_use_of_a_fresh_postgres_database(tmp_path, monkeypatch):
    """An empty database used directly as the tracking URI: the advisory lock serialises the
    migration across processes (and machines)."""
    import services

    uri = services.create_database()  # empty: no MLflow schema yet
    try:
        results = _race(tmp_path / "ws", uri)
        assert results == {i: "ok" for i in range(N_PROCS)}
        _check_store(tmp_path / "ws", uri, monkeypatch)
    finally:
        services.drop_database(uri)


def test_the_lock_excludes_and_a_killed_holder_releases_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    order: list[str] = []
    held = threading.Event()

    def holder():
        with tracking.store_lock(uri):
            held.set()
            time.sleep(0.5)
            order.append("first done")

    t = threading.Thread(target=holder, daemon=True)
    t.start()
    assert held.wait(10)
    with tracking.store_lock(uri):  # flock: another open file description waits
        order.append("second in")
    t.join(10)
    assert order == ["first done", "second in"]

    # A process SIGKILLed while it holds the lock (mid-migration) does not block the next one.
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_hold_forever, args=(uri, ready))
    p.start()
    assert ready.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    t0 = time.monotonic()
    with tracking.store_lock(uri):
        pass
    assert time.monotonic() - t0 < 5


def _hold_forever(uri: str, ready) -> None:
    with tracking.store_lock(uri):
        ready.set()
        time.sleep(600)


_CONFIGURE = """
import sys
from suite import tracking
tracking.configure(workspace=sys.argv[1])
if len(sys.argv) > 2:
    import mlflow
    with tracking.start_run("after", "r", tracking.run_tags("after", "probe", cell="c")):
        mlflow.log_metric("m", 1.0)
    assert tracking.find_finished_run("after", "c") is not None
"""


@pytest.mark.slow
def test_a_creator_killed_mid_creation_leaves_a_store_the_next_process_opens(tmp_path):
    """SIGKILL the process creating a fresh store at points inside the schema migration: the
    next process still creates (or opens) the store and logs a run."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SUITE_WORKSPACE")}
    killed_mid_creation = 0
    for delay in (0.0, 0.5, 1.5):
        ws = tmp_path / f"ws-{delay}"
        ws.mkdir()
        creating = ws / ".mlflow.db.creating"
        p = subprocess.Popen([sys.executable, "-c", _CONFIGURE, str(ws)], env=env)
        deadline = time.monotonic() + 120
        while not creating.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        mid = creating.exists()
        p.kill()
        p.wait(30)
        if p.returncode == -signal.SIGKILL and mid:
            killed_mid_creation += 1
        after = subprocess.run([sys.executable, "-c", _CONFIGURE, str(ws), "log"], env=env,
                               capture_output=True, text=True, timeout=300)
        assert after.returncode == 0, (delay, after.stderr[-2000:])
    assert killed_mid_creation >= 2  # the kills really hit the migration
