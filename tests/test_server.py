"""``suite server`` for real: ``mlflow server`` processes on the workspace's SQLite and on
PostgreSQL, SIGKILLed servers, stale state files, and a study that loses its server mid-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from services import free_port, running_server

from suite import server, tracking
from suite.cli import main
from suite.errors import SuiteError

# The fixtures postgres_db and suite_server.
pytest_plugins = ("services",)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# pure functions


def test_postgres_uris_get_the_psycopg2_driver_and_others_are_kept():
    assert (server.normalize_store_uri("postgresql://me@127.0.0.1:5432/mlflow")
            == "postgresql+psycopg2://me@127.0.0.1:5432/mlflow")
    assert server.normalize_store_uri("postgres://me@h/db") == "postgresql+psycopg2://me@h/db"
    for uri in ("postgresql+psycopg2://me@h/db", "postgresql+psycopg://me@h/db",
                "sqlite:////tmp/x.db", "mysql+pymysql://u@h/db"):
        assert server.normalize_store_uri(uri) == uri


def test_passwords_are_masked():
    assert (server.redact("postgresql+psycopg2://me:secret@h:5432/db")
            == "postgresql+psycopg2://me:***@h:5432/db")
    assert server.redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_shared_stores_are_servers_and_databases():
    for uri in ("http://127.0.0.1:5000", "https://mlflow.example.org",
                "postgresql://u@h/db", "postgresql+psycopg2://u@h/db", "mysql+pymysql://u@h/d"):
        assert tracking.is_shared_store(uri), uri
    for uri in ("sqlite:////tmp/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns", ""):
        assert not tracking.is_shared_store(uri), uri


def test_http_stores_get_small_client_retries_unless_set(monkeypatch, tmp_path):
    for var in tracking.CLIENT_DEFAULTS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    tracking._set_client_defaults("sqlite:////tmp/x.db")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    tracking._set_client_defaults("http://127.0.0.1:5000")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"  # the user's value wins


def test_status_and_stop_without_a_server(tmp_path, capsys):
    assert main(["-w", str(tmp_path), "server", "status"]) == 3
    assert "stopped: no server recorded" in capsys.readouterr().out
    assert main(["-w", str(tmp_path), "server", "stop"]) == 0
    assert "no server was running" in capsys.readouterr().out


def test_a_taken_port_is_a_user_error(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["-w", str(tmp_path), "server", "start", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"Port {port} on 127.0.0.1 is already in use" in err and "--port" in err
    assert not (tmp_path / "server.json").exists()


def test_binding_beyond_loopback_warns_that_there_is_no_auth(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))  # taken, so nothing is started after the warning
        s.listen()
        port = s.getsockname()[1]
        assert main(["-w", str(tmp_path), "server", "start", "--host", "0.0.0.0",
                     "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "warning: binding 0.0.0.0" in err and "no authentication" in err
    assert "basic-auth" in err


def test_an_unreachable_database_is_a_user_error(tmp_path, capsys):
    port = free_port()  # nothing listens there
    rc = main(["-w", str(tmp_path), "server", "start", "--port", str(free_port()),
               "--backend-store-uri", f"postgresql://u@127.0.0.1:{port}/mlflow"])
    assert rc == 2
    assert f"127.0.0.1:{port} is unreachable" in capsys.readouterr().err
    assert not (tmp_path / "server.json").exists()


# ---------------------------------------------------------------------------------------------
# a real server


def _kill_group(pid: int, port: int | None = None) -> None:
    """kill -9 the server's whole process group (mlflow's command and uvicorn); with ``port``,
    wait until the dying workers have let go of it."""
    os.killpg(pid, signal.SIGKILL)
    server.pid_alive(pid)  # reaps it: the test process started it
    if port is not None:
        assert server._wait_port_free("127.0.0.1", port, wait=30)


@pytest.mark.slow
def test_server_on_workspace_sqlite_start_status_stop_and_stale_state(tmp_path, capsys,
                                                                      monkeypatch):
    """The default store: the workspace's SQLite; artifacts proxied into the workspace."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SUITE_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)
    ws = tmp_path / "ws"
    port = free_port()
    w = ["-w", str(ws), "server"]
    assert main(w + ["start", "--port", str(port), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    url = f"http://127.0.0.1:{port}"
    assert f"export MLFLOW_TRACKING_URI={url}" in out.splitlines()
    assert f"sqlite:///{ws.resolve() / 'mlflow.db'}" in out
    state = json.loads((ws / "server.json").read_text())
    assert state["url"] == url and server.pid_alive(state["pid"])
    try:
        # A second start with the same settings is a no-op; another store is refused.
        assert main(w + ["start", "--port", str(port), "--workers", "1"]) == 0
        assert "already running" in capsys.readouterr().out
        assert main(w + ["start", "--port", str(port), "--backend-store-uri",
                         f"sqlite:///{tmp_path / 'other.db'}"]) == 2
        assert "already runs" in capsys.readouterr().err

        assert main(w + ["status"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("running (healthy)") and url in out and str(state["pid"]) in out
        assert main(w + ["status", "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["state"] == "running" and st["healthy"] and st["server"]["port"] == port
        # A server that runs but does not answer (stopped here with SIGSTOP) is told apart.
        os.killpg(state["pid"], signal.SIGSTOP)
        try:
            assert main(w + ["status"]) == 1
            assert capsys.readouterr().out.startswith("running (/health does not answer)")
        finally:
            os.killpg(state["pid"], signal.SIGCONT)

        # Runs and artifacts go through the server: the artifact lands in the workspace.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        tracking._CURRENT = None
        tracking.configure(workspace=tmp_path / "client")
        import mlflow

        with tracking.start_run("srv", "r", tracking.run_tags("srv", "probe", cell="c")):
            mlflow.log_metric("m", 1.5)
            mlflow.log_text("hello", "note.txt")
        assert tracking.find_finished_run("srv", "c").data.metrics["m"] == 1.5
        assert [p.read_text() for p in (ws / "mlflow-artifacts").rglob("note.txt")] == ["hello"]
    finally:
        tracking._CURRENT = None
        # A server SIGKILLed (its whole process group) leaves a stale state file ...
        _kill_group(state["pid"], port)
    assert main(w + ["status"]) == 3
    assert "stale" in capsys.readouterr().out
    assert not (ws / "server.json").exists()  # ... which status reported and removed

    # Started again on the same store, it has the run; stop stops it and cleans up.
    assert main(w + ["start", "--port", str(port), "--workers", "1"]) == 0
    pid = json.loads((ws / "server.json").read_text())["pid"]
    capsys.readouterr()
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(url).search_runs([MlflowClient(url).get_experiment_by_name("srv")
                                          .experiment_id])
    assert [r.data.metrics["m"] for r in runs] == [1.5]
    assert main(w + ["stop"]) == 0
    assert f"stopped the MLflow server (pid {pid}" in capsys.readouterr().out
    assert not server.pid_alive(pid) and not (ws / "server.json").exists()
    assert not server.health(url)
    assert main(w + ["status"]) == 3


@pytest.mark.slow
@pytest.mark.services
def test_a_killed_server_fails_the_next_call_fast_and_names_it(suite_server, tmp_path):
    """Kill -9 the server after a run was logged: the next tracking call fails within seconds
    with an error naming the server and the fix; after a restart it works again."""
    import mlflow

    tracking.configure(workspace=tmp_path / "client")
    with tracking.start_run("gone", "r1", tracking.run_tags("gone", "probe", cell="c1")):
        mlflow.log_metric("m", 1.0)
    ws = Path(suite_server.artifacts).parent
    _kill_group(suite_server.pid)  # not waiting: the next call must fail, not find it closing

    t0 = time.monotonic()
    with pytest.raises(Exception) as info:
        tracking.find_finished_run("gone", "c1")
    elapsed = time.monotonic() - t0
    err = tracking.server_error(info.value)
    assert err is not None, info.value
    assert elapsed < 15, elapsed  # MLflow's own defaults: minutes
    assert suite_server.url in err.message and "suite server status" in err.message
    assert "run the same command again" in err.message
    print(f"failed after {elapsed:.1f} s: {err.message}")

    # Restarted on the same database (and port), the same client carries on.
    assert server._wait_port_free("127.0.0.1", suite_server.port, wait=30)
    state, started = server.start_server(ws, _store_of(suite_server), port=suite_server.port,
                                         workers=1)
    assert started
    assert tracking.find_finished_run("gone", "c1").data.metrics["m"] == 1.0


def _store_of(state: server.ServerState) -> str:
    """The (unmasked) store of a test server: test databases have no password."""
    return state.backend_store


def test_other_errors_are_not_called_server_errors(monkeypatch):
    monkeypatch.setattr(tracking, "current_uri", lambda: "http://127.0.0.1:5000")
    assert tracking.server_error(ValueError("bad value")) is None
    import requests

    try:
        try:
            raise requests.exceptions.ConnectionError("Connection refused")
        except Exception as inner:
            raise RuntimeError("API request to http://127.0.0.1:5000/x failed") from inner
    except RuntimeError as e:
        err = tracking.server_error(e)
    assert isinstance(err, SuiteError) and "http://127.0.0.1:5000" in err.message
    monkeypatch.setattr(tracking, "current_uri", lambda: "sqlite:////tmp/x.db")
    assert tracking.server_error(requests.exceptions.ConnectionError("x")) is None


# ---------------------------------------------------------------------------------------------
# the tiny study on PostgreSQL behind `suite server` vs the embedded SQLite store


def _tiny_yaml(path: Path) -> Path:
    """The tiny preset cut to 2 models x 1 dataset (every setting), so both runs and the
    resume stay near a minute each on 2 cores."""
    from suite.config import load_study, replace, study_to_yaml

    cfg = load_study("tiny")
    cfg = replace(cfg, models=cfg.models[:2], datasets=cfg.datasets[:1])
    path.write_text(study_to_yaml(cfg))
    return path


def _study(ws: Path, yaml: Path, tracking_uri: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SUITE_WORKSPACE")}
    # One thread everywhere: both stores get bit-identical numbers to compare.
    env.update(SUITE_PROGRESS="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return subprocess.Popen([sys.executable, "-m", "suite", "-w", str(ws), "study", "run",
                             str(yaml), "--skip-analysis"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# Metrics that measure time, not the result.
def _timing(name: str) -> bool:
    return "seconds" in name or "time" in name or name.endswith("_s")


def _cells(uri: str, study: str) -> dict[str, dict[str, dict[str, float]]]:
    """suite.cell -> {run id: metrics} of the FINISHED runs of that cell."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(study)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in c.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                           max_results=10000):
        cell = r.data.tags.get(tracking.TAG_CELL)
        if cell:
            out.setdefault(cell, {})[r.info.run_id] = {
                k: v for k, v in r.data.metrics.items() if not _timing(k)}
    return out


@pytest.mark.slow
@pytest.mark.services
def test_tiny_study_on_postgres_server_matches_sqlite_and_survives_a_server_kill(
        tmp_path, postgres_db):
    yaml = _tiny_yaml(tmp_path / "tiny2.yaml")

    ref = _study(tmp_path / "sqlite-ws", yaml, None)
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-3000:]
    expected = _cells(f"sqlite:///{tmp_path / 'sqlite-ws' / 'mlflow.db'}", "tiny")
    # 2 pretrain + 2 probe + 2 fine-tune + scratch cells, each with its accuracy metrics
    assert len(expected) >= 6 and all(
        len(runs) == 1 and next(iter(runs.values())) for runs in expected.values())

    srv_ws = tmp_path / "server-ws"
    port = free_port()
    with running_server(srv_ws, postgres_db, port=port) as state:
        url = state.url
        # Kill -9 the server once some cells are FINISHED: the study fails fast, naming it.
        study = _study(tmp_path / "client-ws", yaml, url)
        from mlflow.tracking import MlflowClient

        deadline = time.monotonic() + 400
        before: dict = {}
        while time.monotonic() < deadline and study.poll() is None:
            if MlflowClient(url).get_experiment_by_name("tiny"):
                before = _cells(url, "tiny")
                if len(before) >= 3:
                    break
            time.sleep(0.5)
        assert study.poll() is None, "the study finished before the server could be killed"
        assert len(before) >= 3
        _kill_group(state.pid)
        t_kill = time.monotonic()
        assert server._wait_port_free("127.0.0.1", port, wait=30)
        out, err = study.communicate(timeout=300)
        failed_after = time.monotonic() - t_kill
        assert study.returncode == 2, err[-3000:]
        assert f"The MLflow tracking server {url} did not answer" in err
        assert "suite server status" in err and "Traceback" not in err
        print(f"study exited {failed_after:.1f} s after the server was killed")

    # Restarted on the same database, the same command resumes and completes.
    with running_server(srv_ws, postgres_db, port=port) as state:
        study = _study(tmp_path / "client-ws", yaml, state.url)
        out, err = study.communicate(timeout=600)
        assert study.returncode == 0, err[-3000:]
        got = _cells(state.url, "tiny")

    # Cells finished before the kill were kept, not run again ...
    for cell, runs in before.items():
        assert got[cell] == runs, cell
    # ... and the study has the same cells with the same numbers as on SQLite.
    assert set(got) == set(expected)
    for cell, runs in got.items():
        (ref_metrics,) = expected[cell].values()
        for metrics in runs.values():
            assert metrics == ref_metrics, cell
