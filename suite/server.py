"""The workspace's MLflow tracking server: ``suite server start | stop | status``.

Many workers (``--executor local`` on several machines' worth of processes, ``--executor
slurm``) must share one tracking store, and a SQLite file must never be shared between nodes.
:func:`start_server` runs ``mlflow server`` (uvicorn) detached from the terminal:

- backend store: a PostgreSQL URI (``postgresql://USER@HOST:PORT/DB`` is turned into the
  ``postgresql+psycopg2://`` form MLflow's SQLAlchemy stores load) or, by default, the
  workspace's own SQLite file ``<workspace>/mlflow.db``;
- artifacts proxied by the server into ``<workspace>/mlflow-artifacts`` (``--serve-artifacts``
  with ``--artifacts-destination``), so workers need no access to the workspace's file system;
- bound to 127.0.0.1 unless ``--host`` says otherwise. The server has no authentication: anyone
  who can reach the port can read and delete every run. Bind elsewhere only on a trusted
  network, or run ``mlflow server --app-name basic-auth`` yourself (see docs/scaleout.md).

The store is created/migrated once (an old schema with ``mlflow db upgrade``) under
:func:`suite.tracking.store_lock` before the server starts, because uvicorn's workers would
otherwise each open a fresh store at once and race its migration. ``start`` returns once
``/health`` answers.

State: ``<workspace>/server.json`` (pid, tracking URL, backend store with any password masked,
artifact folder, log file ``<workspace>/server.log``). ``status`` reads it and asks ``/health``;
``stop`` sends SIGTERM to the server's process group (uvicorn runs in child processes), then
SIGKILL after a timeout, and removes the file. A state file whose process is gone (the machine
rebooted, the server was SIGKILLed) is reported as stale and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from suite import tracking
from suite.errors import SuiteError

STATE_FILE = "server.json"
LOG_FILE = "server.log"
ARTIFACTS_DIR = "mlflow-artifacts"
DEFAULT_PORT = 5000
DEFAULT_WORKERS = 4  # mlflow server's own default (uvicorn worker processes)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerState:
    """What ``server.json`` records about a running server."""

    pid: int  # the `mlflow server` process; leader of its own session and process group
    url: str  # the tracking URI clients use (http://HOST:PORT)
    backend_store: str  # password masked
    artifacts: str  # folder the server writes proxied artifacts to
    log: str  # the server's stdout and stderr
    host: str
    port: int
    workers: int
    started: float  # time.time() at start


@dataclass(frozen=True)
class ServerStatus:
    """``suite server status``: ``state`` is running | stopped | stale."""

    state: str
    healthy: bool
    server: ServerState | None
    workspace: str

    def to_json(self) -> dict:
        return {"state": self.state, "healthy": self.healthy, "workspace": self.workspace,
                "server": asdict(self.server) if self.server else None}


# Re-exported: the server normalises its store URI as every client does, and masks passwords.
normalize_store_uri = tracking.normalize_store_uri
redact = tracking.redact


def client_url(host: str, port: int) -> str:
    """The tracking URI for clients of a server bound to ``host``."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()  # bound everywhere: other machines use this one's name
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _local_url(state: ServerState) -> str:
    """Where this machine reaches the server (the wildcard binds answer on loopback)."""
    host = "127.0.0.1" if state.host in ("0.0.0.0", "::", "") else state.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{state.port}"


def state_path(workspace: Path) -> Path:
    return workspace / STATE_FILE


def read_state(workspace: Path) -> ServerState | None:
    path = state_path(workspace)
    try:
        return ServerState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        raise SuiteError(f"The server state file {path} is unreadable ({e}).",
                         "Stop the server by its pid if one runs, then delete the file.") from None


def _write_state(workspace: Path, state: ServerState) -> None:
    # Write-then-rename: a reader (or a SIGKILL mid-write) never sees half a file.
    path = state_path(workspace)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, path)


def _remove_state(workspace: Path) -> None:
    state_path(workspace).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live (not zombie) `mlflow server` process.

    The command line is checked so that a pid reused by another program after a reboot is never
    signalled; a zombie (our own child, killed but not yet reaped) counts as gone.
    """
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child that died
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return any("mlflow" in a for a in args) and "server" in args


def health(url: str, timeout: float = 3.0) -> bool:
    """True if the server at ``url`` answers ``GET /health`` with 200."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _wait_port_free(host: str, port: int, wait: float = 5.0) -> bool:
    """True once ``port`` can be bound, trying for ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while not _port_free(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text[-lines:])


def server_status(workspace: Path) -> ServerStatus:
    """Running, stopped or stale (and then the stale state file is removed)."""
    state = read_state(workspace)
    if state is None:
        return ServerStatus("stopped", False, None, str(workspace))
    if not pid_alive(state.pid):
        _remove_state(workspace)
        return ServerStatus("stale", False, state, str(workspace))
    return ServerStatus("running", health(_local_url(state)), state, str(workspace))


def migrate_store(uri: str) -> None:
    """Create or upgrade the MLflow schema of ``uri`` once, under the store lock.

    Opening the store creates the tables of an empty database (MLflow does that on first use;
    the lock makes it one process) and leaves a current one as it is; a store with an older
    schema is upgraded with ``mlflow db upgrade``.
    """
    uri = normalize_store_uri(uri)
    path = tracking.sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    tracking._check_reachable(uri)
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with tracking.store_lock(uri):
        if path is not None:
            tracking.create_sqlite_store(path)  # a new file all at once
        try:
            SqlAlchemyStore(uri, "mlflow-artifacts:/").engine.dispose()
            return
        except MlflowException as e:
            if "out-of-date database schema" not in str(e):
                _migration_failed(uri, str(e))
        except Exception as e:  # noqa: BLE001 -- driver, credentials, missing database ...
            _migration_failed(uri, f"{type(e).__name__}: {e}")
        proc = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        _migration_failed(uri, "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:]))


def _migration_failed(uri: str, detail: str) -> None:
    raise SuiteError(
        f"Creating/upgrading the MLflow schema of {redact(uri)} failed: {detail.strip()[:1500]}",
        "Check the URI, the database's name, user and password (the database must exist: "
        "`createdb` or `create database ...`), and that psycopg2-binary is installed "
        "(pip install -e \".[server]\"). Nothing was started.",
    )


def start_server(workspace: Path, backend_store_uri: str | None = None, *,
                 host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 workers: int = DEFAULT_WORKERS, allowed_hosts: str | None = None,
                 timeout: float = 180.0) -> tuple[ServerState, bool]:
    """Start the workspace's server (detached) and wait until ``/health`` answers.

    Returns ``(state, started)``; ``started`` is False when the same server already runs.
    Raises :class:`SuiteError` if another server runs for this workspace, the port is taken,
    the store cannot be migrated, or the server does not come up within ``timeout`` seconds.
    """
    workspace = workspace.resolve()
    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SuiteError(f"Cannot create the workspace folder {workspace}: {e.strerror}.",
                         "Pass --workspace with a writable folder.") from None
    uri = normalize_store_uri(backend_store_uri or f"sqlite:///{workspace / 'mlflow.db'}")
    with _workspace_lock(workspace):  # two `start`s at once: one starts, the other sees it
        return _start_locked(workspace, uri, host, port, workers, allowed_hosts, timeout)


@contextlib.contextmanager
def _workspace_lock(workspace: Path):
    import fcntl

    with open(workspace / "server.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _start_locked(workspace: Path, uri: str, host: str, port: int, workers: int,
                  allowed_hosts: str | None, timeout: float) -> tuple[ServerState, bool]:
    status = server_status(workspace)
    if status.state == "running":
        running = status.server
        if (running.backend_store, running.host, running.port) == (redact(uri), host, port):
            return running, False
        raise SuiteError(
            f"A tracking server already runs for the workspace {workspace} (pid {running.pid}, "
            f"{running.url}, store {running.backend_store}).",
            "Stop it first with `suite server stop`, or use it: "
            f"export MLFLOW_TRACKING_URI={running.url}",
        )
    if workers < 1:
        raise SuiteError(f"--workers must be at least 1, got {workers}.",
                         "For example: --workers 2")
    # A server killed a moment ago (its workers exit a little after it) may still hold it.
    if not _wait_port_free(host, port, wait=5.0 if status.state == "stale" else 2.0):
        raise SuiteError(f"Port {port} on {host} is already in use.",
                         "Stop what listens there, or pick another with --port.")
    migrate_store(uri)

    artifacts = workspace / ARTIFACTS_DIR
    artifacts.mkdir(exist_ok=True)
    log = workspace / LOG_FILE
    cmd = [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", str(artifacts),
           "--serve-artifacts", "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        # MLflow's middleware accepts Host headers of localhost and private IP addresses by
        # default; clients that reach the server by a host name need it listed.
        cmd += ["--allowed-hosts", allowed_hosts]
    env = dict(os.environ)
    # The store URI goes through mlflow's own environment variable rather than the command
    # line, so a database password never shows in `ps`.
    env["MLFLOW_BACKEND_STORE_URI"] = uri
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    # MLflow's GenAI job runner (eight huey consumer processes, for traces and scorers) serves
    # nothing suite logs; leaving it out saves their start-up and memory. Set the variable to
    # true to keep it.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with open(log, "ab") as fh:
        fh.write(f"\n--- suite server start {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                 f"{' '.join(cmd)} (store {redact(uri)})\n".encode())
        fh.flush()
        # A new session: the server outlives this command and the terminal, and its process
        # group (mlflow's CLI and the uvicorn workers it spawns) is stopped as one.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                cwd=workspace, env=env, start_new_session=True)
    state = ServerState(pid=proc.pid, url=client_url(host, port), backend_store=redact(uri),
                        artifacts=str(artifacts), log=str(log), host=host, port=port,
                        workers=workers, started=time.time())
    _write_state(workspace, state)  # before waiting: `stop` works even if this is interrupted
    deadline = time.monotonic() + timeout
    while not health(_local_url(state), timeout=2.0):
        if proc.poll() is not None:
            _remove_state(workspace)
            raise SuiteError(
                f"The MLflow server exited with code {proc.returncode} before answering. "
                f"Last lines of {log}:\n{_log_tail(log)}",
                "Fix what the log says (a port in use, a bad store URI) and start it again.",
            )
        if time.monotonic() > deadline:
            _terminate(proc.pid, grace=5.0)
            _remove_state(workspace)
            raise SuiteError(
                f"The MLflow server did not answer /health within {timeout:.0f} s; it was "
                f"stopped. Last lines of {log}:\n{_log_tail(log)}",
                "Start it again with a longer --timeout (a large store's first migration can "
                "take minutes), or read the log.",
            )
        time.sleep(0.5)
    return state, True


def _terminate(pid: int, grace: float) -> bool:
    """SIGTERM the process group ``pid`` leads, SIGKILL it after ``grace`` seconds.
    Returns True if SIGKILL was needed."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        return True
    # The leader is gone; uvicorn workers it left behind in the group go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return False


def stop_server(workspace: Path, grace: float = 10.0) -> ServerStatus:
    """Stop the workspace's server (SIGTERM, then SIGKILL after ``grace`` seconds) and remove
    its state file. Returns the status it had before (running, stale or stopped)."""
    workspace = workspace.resolve()
    status = server_status(workspace)
    if status.state == "running":
        _terminate(status.server.pid, grace)
        _remove_state(workspace)
    return status
