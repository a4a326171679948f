"""Executors end to end on a real SQLite store: ``local --jobs 2`` gives the cells and metrics
of ``inprocess``; four drivers started at once run every cell exactly once; a SIGKILLed worker's
claim is taken over by the next run and nothing is left RUNNING."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import time

import pytest

from suite import claims, tracking
from suite.cli import main

# 2 models x 1 target, every setting: 2 pretrain + 2 probe + 2 finetune points + 2 finetune
# selections + 2 scratch points + 2 scratch selections (one-point grids).
STUDY = """
name: ex
source: synth-source
models:
  - {name: a, width: 4, depth: 1, epochs: 1}
  - {name: b, width: 6, depth: 1, epochs: 1}
datasets: [synth-shapes]
settings: [logistic, finetune, scratch]
l2_grid: [0.001, 1.0]
finetune: {lrs: [0.05], weight_decays: [0.0001], steps: 4, batch_size: 32, eval_every: 2}
scratch:  {lrs: [0.1], weight_decays: [0.0001], steps: 4, batch_size: 32, eval_every: 2}
n_resamples: 50
"""
N_CELLS = 12


def results(study: str = "ex") -> dict[str, dict[str, float]]:
    """FINISHED stage runs of the study by cell key -> their accuracy metrics."""
    out = {}
    for run in tracking.client().search_runs(
            [tracking.experiment_id(study)], "attributes.status = 'FINISHED'", max_results=5000):
        cell = run.data.tags.get(tracking.TAG_CELL)
        if cell:
            assert cell not in out, f"cell {cell} FINISHED twice"
            out[cell] = {k: v for k, v in run.data.metrics.items()
                         if k in ("test_accuracy", "val_accuracy", "source_top1")}
    return out


def not_finished(study: str = "ex") -> list:
    return tracking.client().search_runs(
        [tracking.experiment_id(study)], "attributes.status = 'RUNNING'", max_results=5000)


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "ex.yaml"
    path.write_text(STUDY)
    return str(path)


def same_results(a: dict, b: dict) -> None:
    """The same cells with the same metrics. Exact: the reference runs with one thread
    (``one_thread``), as every worker does (``SUITE_WORKER_THREADS=1``, ``cpus_per_job: 1``);
    with another thread count, reductions add in another order and a 1-epoch CNN ends a test
    image or two apart."""
    assert a.keys() == b.keys()
    for cell in a:
        assert a[cell] == b[cell], cell


@pytest.mark.slow
def test_local_jobs_2_matches_inprocess(store, fresh_store, tmp_path, study_file, capsys,
                                        one_thread, monkeypatch):
    monkeypatch.setenv("SUITE_WORKER_THREADS", "1")
    assert main(["-w", str(store.workspace), "study", "run", study_file,
                 "--skip-analysis"]) == 0
    serial = results()
    assert len(serial) == N_CELLS
    ws2 = tmp_path / "ws-local"
    fresh_store(ws2)
    assert main(["-w", str(ws2), "study", "run", study_file, "--skip-analysis",
                 "--executor", "local", "--jobs", "2"]) == 0
    err = capsys.readouterr().err
    assert "local, 2 jobs" in err and "started pretrain a (worker 0" in err
    same_results(results(), serial)
    assert not not_finished()
    assert len(tracking.study_versions("ex")) == 2
    assert (ws2 / "logs" / "ex").is_dir()
    # The status command sees the same study as done.
    assert main(["-w", str(ws2), "study", "status", study_file, "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert {k: v["done"] for k, v in report["stages"].items()} == {
        "pretrain": 2, "probe": 2, "finetune-point": 2, "finetune": 2, "scratch-point": 2,
        "scratch": 2, "analysis": 0}
    assert [c["label"] for c in report["cells"]] == ["analysis"]


def _driver(ws: str, path: str, gate, code) -> None:
    os.environ["SUITE_PROGRESS"] = "0"
    gate.wait(timeout=120)
    code.value = main(["-w", ws, "-q", "study", "run", path, "--skip-analysis"])


@pytest.mark.slow
def test_four_drivers_at_once_run_every_cell_once(store, study_file):
    # spawn, not fork: a forked child of a process whose torch thread pools already ran (any
    # earlier test) can hang in its first parallel op; four separate `suite` commands are
    # fresh interpreters anyway.
    ctx = mp.get_context("spawn")
    gate = ctx.Barrier(4)
    codes = [ctx.Value("i", -1) for _ in range(4)]
    procs = [ctx.Process(target=_driver, args=(str(store.workspace), study_file, gate, c))
             for c in codes]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=900)
    assert not any(p.is_alive() for p in procs), "a driver hung"
    assert [c.value for c in codes] == [0, 0, 0, 0]
    done = results()  # asserts each cell FINISHED once
    assert len(done) == N_CELLS
    versions = tracking.study_versions("ex")
    assert sorted(mv.name for mv in versions) == ["ex-a", "ex-b"]
    assert not not_finished()
    # Every claim run ended; exactly one per cell ended FINISHED.
    rows = claims.list_claims("ex")
    assert {r.status for r in rows} <= {"FINISHED", "KILLED"}
    finished = [r.cell for r in rows if r.status == "FINISHED"]
    assert sorted(finished) == sorted(set(finished)) and len(finished) == N_CELLS


@pytest.mark.slow
def test_sigkilled_worker_is_taken_over(store, study_file, capsys):
    from suite.cells import expand
    from suite.config import load_study
    from suite.executors import worker_command, write_study_file

    cfg = load_study(study_file)
    slow = next(c for c in expand(cfg) if c.label == "pretrain b")
    env = dict(os.environ, SUITE_PROGRESS="0", OMP_NUM_THREADS="1")
    worker = subprocess.Popen(worker_command(write_study_file(cfg), slow.key), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    exp = tracking.experiment_id("ex")
    deadline = time.time() + 180
    while time.time() < deadline:  # wait until it is inside the stage's run
        running = tracking.client().search_runs(
            [exp], f"tags.`{tracking.TAG_CELL}` = '{slow.key}' and attributes.status = 'RUNNING'")
        if running:
            break
        assert worker.poll() is None, "the worker ended before it was killed"
        time.sleep(0.2)
    assert running, "the worker never started its stage run"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    (dead,) = claims.list_claims("ex", slow.key)
    assert dead.status == "RUNNING"  # what a SIGKILL leaves behind

    assert main(["-w", str(store.workspace), "study", "run", study_file, "--skip-analysis"]) == 0
    assert "taking over pretrain b" in capsys.readouterr().err
    old = tracking.client().get_run(dead.run_id)
    assert old.info.status == "KILLED" and "is gone" in old.data.tags["suite.claim_stale"]
    assert tracking.client().get_run(running[0].info.run_id).info.status == "KILLED"
    assert len(results()) == N_CELLS
    assert not not_finished()
    assert len(tracking.study_versions("ex")) == 2


def test_status_of_a_fresh_study_and_failed_cell(store, study_file, capsys, monkeypatch):
    """A stage that fails records its error on the claim; status lists it; nothing RUNNING."""
    import suite.study as study_mod

    def broken(cfg, model):
        raise RuntimeError(f"no source data for {model.name}")

    monkeypatch.setattr(study_mod, "_pretrain", broken)
    assert main(["-w", str(store.workspace), "study", "status", study_file]) == 0
    out = capsys.readouterr().out
    assert "pretrain" in out and "0" in out
    with pytest.raises(RuntimeError):
        main(["-w", str(store.workspace), "study", "run", study_file, "--skip-analysis"])
    assert main(["-w", str(store.workspace), "study", "status", study_file]) == 0
    out = capsys.readouterr().out
    assert "failed  pretrain a: RuntimeError: no source data for a" in out
    assert not not_finished()


def test_executor_in_study_config_is_not_in_cell_keys(store, study_file):
    from suite.cells import expand
    from suite.config import Executor, SlurmOptions, load_study, replace

    cfg = load_study(study_file)
    other = replace(cfg, executor=Executor.local, jobs=8, max_concurrent=3, device="cpu",
                    num_workers=0, slurm=SlurmOptions(partition="gpu", gpus_per_job=1))
    assert [c.key for c in expand(cfg)] == [c.key for c in expand(other)]


def test_worker_on_unknown_cell_is_a_clear_error(store, study_file, capsys):
    assert main(["-w", str(store.workspace), "study", "work", study_file,
                 "--cell", "0123456789abcdef"]) == 2
    assert "has no cell 0123456789abcdef ready to run" in capsys.readouterr().err

