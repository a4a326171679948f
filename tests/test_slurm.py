"""The ``slurm`` executor on a real single-node SLURM cluster (``.ci/services.sh`` starts it and
exports ``SUITE_TEST_SLURM=1``) against a real ``suite server`` on PostgreSQL: the same cells and
metrics as ``inprocess``; the clear errors without ``sbatch`` or on a store nodes cannot share.
Without the cluster these tests skip, or fail when ``SUITE_REQUIRE_SERVICES=1``."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
from services import missing
from test_executors import STUDY, not_finished, results, same_results

from suite import tracking
from suite.cli import main

pytest_plugins = ("services",)


def _require_slurm() -> None:
    if os.environ.get("SUITE_TEST_SLURM") != "1" or shutil.which("sbatch") is None:
        missing("a SLURM cluster (SUITE_TEST_SLURM=1 and sbatch on PATH)")
    import subprocess

    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if out.returncode != 0 or "idle" not in out.stdout and "mix" not in out.stdout:
        missing(f"an idle SLURM node (sinfo: {out.stdout.strip() or out.stderr.strip()})")


@pytest.mark.slow
@pytest.mark.services
def test_slurm_study_matches_inprocess(tmp_path, fresh_store, suite_server, monkeypatch,
                                       capsys, one_thread):
    _require_slurm()
    path = tmp_path / "ex.yaml"
    # One CPU per job: two jobs at once on a 2-core node.
    path.write_text(STUDY + "slurm: {cpus_per_job: 1, time_limit: '00:20:00'}\n")
    # The reference: inprocess on the embedded SQLite store of another workspace.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    serial_ws = tmp_path / "ws-serial"
    fresh_store(serial_ws)
    assert main(["-w", str(serial_ws), "study", "run", str(path), "--skip-analysis"]) == 0
    serial = results()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", suite_server.url)
    tracking._CURRENT = None
    ws = tmp_path / "ws-slurm"
    assert main(["-w", str(ws), "--tracking-uri", suite_server.url, "study", "run", str(path),
                 "--skip-analysis", "--executor", "slurm", "--max-concurrent", "2"]) == 0
    err = capsys.readouterr().err
    assert "submitted pretrain a (SLURM job" in err
    same_results(results(), serial)
    assert not not_finished()
    assert sorted(mv.name for mv in tracking.study_versions("ex")) == ["ex-a", "ex-b"]
    from suite import claims

    done = [c for c in claims.list_claims("ex") if c.status == "FINISHED"]
    assert len(done) == 12 and all(c.slurm_job for c in done)
    # Each claim is the run MLflow Projects launched on the suite-slurm backend.
    for c in done:
        run = tracking.client().get_run(c.run_id)
        assert run.data.tags["mlflow.project.backend"] == "suite-slurm"
        assert run.data.tags["mlflow.project.entryPoint"] == "main"
        assert run.data.params["cell"] == c.cell
        assert c.owner != claims.QUEUED  # adopted by its worker
    assert list((ws / "logs" / "ex").glob("slurm-*.out"))


@pytest.mark.slow
@pytest.mark.services
def test_a_queued_job_holds_its_cell_until_cancelled(tmp_path, suite_server, monkeypatch,
                                                     one_thread):
    """Submission makes the claim: a held (queued) job's cell is running for every driver;
    once the job is cancelled, the claim is stale and the next run takes the cell over."""
    _require_slurm()
    import subprocess

    from suite import cells, claims
    from suite.config import SlurmOptions, load_study, replace
    from suite.executors import SlurmExecutor

    path = tmp_path / "one.yaml"
    path.write_text("name: held\nsource: synth-source\nmodels:\n  - {name: a, width: 4, "
                    "depth: 1, epochs: 1}\ndatasets: [synth-shapes]\nsettings: [logistic]\n"
                    "l2_grid: [1.0]\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", suite_server.url)
    tracking._CURRENT = None
    tracking.configure(workspace=tmp_path / "ws", tracking_uri=suite_server.url)
    cfg = replace(load_study(str(path)), slurm=SlurmOptions(extra_sbatch=("--hold",)))
    first = next(s for s in cells.states(cfg) if s.state is cells.State.pending)
    ex = SlurmExecutor(slurm=cfg.slurm)
    ex.submit(cfg, first.cell)
    job = ex.mine[first.cell.key]
    st = next(s for s in cells.states(cfg) if s.cell.key == first.cell.key)
    assert st.state is cells.State.running and st.claim.owner == claims.QUEUED
    assert st.claim.slurm_job == job
    subprocess.run(["scancel", job], check=True)
    for _ in range(50):  # scancel is asynchronous
        if not claims.slurm_job_alive(job):
            break
        import time

        time.sleep(0.2)
    st = next(s for s in cells.states(cfg) if s.cell.key == first.cell.key)
    assert st.state is cells.State.pending and "is gone" in st.stale
    assert main(["-w", str(tmp_path / "ws"), "--tracking-uri", suite_server.url, "-q",
                 "study", "run", str(path), "--skip-analysis"]) == 0
    rows = claims.list_claims("held", first.cell.key)
    assert [r.status for r in rows] == ["KILLED", "FINISHED"]
    assert not not_finished("held")


def test_slurm_without_sbatch_is_a_clear_error(store, tmp_path, monkeypatch, capsys):
    path = tmp_path / "ex.yaml"
    path.write_text(STUDY)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["-w", str(store.workspace), "study", "run", str(path),
                 "--executor", "slurm"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "needs the SLURM client commands (sbatch, squeue)" in err
    assert "--executor local" in err


def test_slurm_on_sqlite_is_refused(store, tmp_path, monkeypatch, capsys):
    path = tmp_path / "ex.yaml"
    path.write_text(STUDY)
    # sbatch and squeue on PATH (they are never called: the store check refuses first).
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("sbatch", "squeue"):
        exe = bindir / name
        exe.write_text("#!/bin/sh\nexit 1\n")
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert main(["-w", str(store.workspace), "study", "run", str(path),
                 "--executor", "slurm"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is a local file (SQLite must not be shared between nodes)" in err
    assert "suite server start" in err


def test_sbatch_command_carries_the_study_resources():
    from suite.config import SlurmOptions
    from suite.executors import sbatch_command

    opts = SlurmOptions(partition="gpu", gpus_per_job=1, cpus_per_job=8, time_limit="04:00:00",
                        extra_sbatch=("--account=proj", "--qos=high"))
    cmd = sbatch_command(opts, "suite-abc", "/ws/logs/s/slurm-%j.out",
                         ["/venv/bin/python", "-m", "suite", "study", "work", "/ws/s.yaml",
                          "--cell", "abc"])
    assert cmd[:2] == ["sbatch", "--parsable"]
    for opt in ("--job-name=suite-abc", "--partition=gpu", "--gres=gpu:1", "--cpus-per-task=8",
                "--time=04:00:00", "--account=proj", "--qos=high", "--export=ALL"):
        assert opt in cmd
    assert cmd[-2:] == ["--wrap", "/venv/bin/python -m suite study work /ws/s.yaml --cell abc"]
