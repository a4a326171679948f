"""Every MLflow call the other stages need: store setup, experiments, run tags, resume, registry.

Embedded default: a SQLite store ``<workspace>/mlflow.db`` and artifacts under
``<workspace>/artifacts`` (absolute URIs, so MLflow Projects' child processes, which run in the
project folder, see the same store). ``MLFLOW_TRACKING_URI`` (a server, PostgreSQL, ...) wins.
The store is created and migrated once, serially, by :func:`configure` before any parallel work.

Run tags (``suite.*``) let the UI filter and analysis query without guessing:

===================  =========================================================================
``suite.study``      study (= experiment) name
``suite.stage``      pretrain | probe | finetune | analysis
``suite.model``      registered model name
``suite.model_version``  registered model version
``suite.dataset``    dataset name
``suite.setting``    logistic | finetune | scratch
``suite.cell``       hash of everything that defines the result; a FINISHED run with the same
                     cell is reused (resume)
===================  =========================================================================
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from suite.errors import SuiteError

TAG_STUDY = "suite.study"
TAG_STAGE = "suite.stage"
TAG_MODEL = "suite.model"
TAG_MODEL_VERSION = "suite.model_version"
TAG_DATASET = "suite.dataset"
TAG_SETTING = "suite.setting"
TAG_CELL = "suite.cell"
TAG_PARENT_RUN = "mlflow.parentRunId"

# Registered-model version tags (what analysis and fine-tuning read back).
VTAG_ARCH = "architecture"
VTAG_SOURCE = "source_dataset"
VTAG_SOURCE_TOP1 = "source_top1"  # percent
VTAG_CHOICES = ("bn_scale", "label_smoothing", "dropout", "aux_head")

ENV_WORKSPACE = "SUITE_WORKSPACE"
DEFAULT_WORKSPACE = "suite-workspace"


@dataclass(frozen=True)
class Tracking:
    """Where results go."""

    workspace: Path  # absolute; features cache, reports, and (embedded) the store
    tracking_uri: str
    artifact_root: str | None  # file URI for new experiments (embedded store only)

    @property
    def embedded(self) -> bool:
        return self.artifact_root is not None


_CURRENT: Tracking | None = None


def resolve_workspace(workspace: str | Path | None = None) -> Path:
    ws = workspace or os.environ.get(ENV_WORKSPACE) or DEFAULT_WORKSPACE
    return Path(ws).expanduser().resolve()


def configure(workspace: str | Path | None = None, tracking_uri: str | None = None) -> Tracking:
    """Point MLflow at the store, check it answers, create/migrate it once. Idempotent.

    Order of precedence: ``tracking_uri`` argument, ``MLFLOW_TRACKING_URI``, embedded SQLite.
    """
    global _CURRENT
    import mlflow

    ws = resolve_workspace(workspace)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    uri = normalize_store_uri(uri) if uri else uri
    artifact_root = None
    if not uri:
        try:
            ws.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SuiteError(f"Cannot create the workspace folder {ws}: {e.strerror}.",
                             "Pass --workspace with a writable folder.") from None
        uri = f"sqlite:///{ws / 'mlflow.db'}"
        artifact_root = (ws / "artifacts").as_uri()
    if _CURRENT is not None and _CURRENT.tracking_uri == uri and _CURRENT.workspace == ws:
        return _CURRENT
    _set_client_defaults(uri)
    _check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    logging.getLogger("mlflow.pytorch").addFilter(_PickleNotice())
    for noisy in ("mlflow.store.db.utils", "alembic"):  # "Creating initial tables..." etc.
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Children (MLflow Projects, DataLoader workers) inherit the same store.
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ[ENV_WORKSPACE] = str(ws)
    _CURRENT = Tracking(workspace=ws, tracking_uri=uri, artifact_root=artifact_root)
    _init_store()
    return _CURRENT


class _PickleNotice(logging.Filter):
    """Drop mlflow.pytorch's notice about pickle: suite logs its own modules by pickle on
    purpose (a pt2 export loses the classifier structure that fine-tuning replaces)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Pickle or CloudPickle" not in record.getMessage()


def current() -> Tracking:
    """The configured tracking (configuring the default on first use)."""
    return _CURRENT if _CURRENT is not None else configure()


def _check_reachable(uri: str) -> None:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        host = parsed.hostname or "localhost"
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=3):
                pass
        except OSError as e:
            raise SuiteError(
                f"The MLflow tracking server {uri} is unreachable ({e.strerror or e}).",
                "Start it (`suite server start`; `suite server status` says whether it runs) "
                "or fix MLFLOW_TRACKING_URI / --tracking-uri; "
                "unset it to use the embedded store in the workspace folder. "
                "Nothing was logged.",
            ) from None
    elif parsed.scheme.startswith("postgresql") or parsed.scheme.startswith("mysql"):
        host = parsed.hostname or "localhost"
        port = parsed.port or (5432 if parsed.scheme.startswith("postgresql") else 3306)
        try:
            with socket.create_connection((host, port), timeout=3):
                pass
        except OSError as e:
            raise SuiteError(
                f"The tracking database at {host}:{port} is unreachable ({e.strerror or e}).",
                "Start the database or fix MLFLOW_TRACKING_URI. Nothing was logged.",
            ) from None
    elif parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if path is not None and not path.parent.exists():
            raise SuiteError(f"The folder of the tracking database {path} does not exist.",
                             "Create it, or pass --workspace to use another folder.")


# MLflow's own defaults (7 retries, backoff factor 2, 120 s a request) keep a client waiting
# for minutes after its server died. A shared server restarts in seconds, and a cell that fails
# fast is rerun by the next `suite study run`: two retries (about 0 + 2 s of backoff) ride out a
# busy moment without hiding a dead server.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def _set_client_defaults(uri: str) -> None:
    """Small retry/timeout defaults for an http(s) tracking URI; values the user set win."""
    if urllib.parse.urlparse(uri).scheme in ("http", "https"):
        for var, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(var, value)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(urllib.parse.unquote(uri[len("sqlite:///"):].split("?", 1)[0]))


# Any fixed 64-bit number: the key of the PostgreSQL advisory lock that creation and migration
# of an MLflow schema take (one per database, so unrelated databases never wait on each other).
_PG_LOCK_KEY = 0x5_17E_5C0E  # "suite scope"


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on the store ``uri`` while it is created or migrated.

    MLflow's SQLAlchemy stores create their tables on first use with no lock (its tracking and
    registry stores both call ``_initialize_tables``), so processes that first touch a fresh
    store at once race the alembic migration ("table _alembic_tmp_experiments already exists")
    and leave it unopenable. SQLite: ``fcntl.flock`` on ``<db>.lock`` beside the database file
    (every process that can open the file can take it; released by the kernel when the holder
    dies, even by SIGKILL). PostgreSQL: a session advisory lock in the database itself, so
    processes on several machines serialise too. Other stores (a server migrates its own
    store before it accepts work): no lock.
    """
    path = sqlite_path(uri)
    if path is not None:
        import fcntl

        with open(path.with_name(path.name + ".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # blocks until the creator is done (or dead)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    if urllib.parse.urlparse(uri).scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(normalize_store_uri(uri),
                                          poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("select pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("select pg_advisory_unlock(:k)"),
                                 {"k": _PG_LOCK_KEY})
        finally:
            engine.dispose()
        return
    yield


def create_sqlite_store(path: Path) -> None:
    """Create a new SQLite store at ``path`` all at once (call under :func:`store_lock`).

    MLflow's SQLite migrations rebuild tables one by one (``_alembic_tmp_*`` copies), so a
    process SIGKILLed while it creates a store leaves one that no later process can open. The
    schema is therefore built in a temporary file beside it and renamed into place: a kill
    leaves only the temporary file, which the next creator overwrites. An existing, non-empty
    file is left as it is.
    """
    if path.exists() and path.stat().st_size > 0:
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = path.with_name(f".{path.name}.creating")
    for stale in (tmp, tmp.with_name(tmp.name + "-journal")):
        stale.unlink(missing_ok=True)  # a creator killed earlier
    store = SqlAlchemyStore(f"sqlite:///{tmp}", (path.parent / "artifacts").as_uri())
    store.engine.dispose()
    os.replace(tmp, path)


def _init_store() -> None:
    """Create/migrate the store now, under :func:`store_lock`: concurrent first use of a fresh
    store corrupts it. MLflow caches the opened stores per process, so later calls in this
    process never initialise again."""
    from mlflow.tracking import MlflowClient

    try:
        with store_lock(current_uri()):
            path = sqlite_path(current_uri())
            if path is not None:
                create_sqlite_store(path)
            c = MlflowClient()
            c.search_experiments(max_results=1)  # tracking store: creates/verifies the schema
            c.search_registered_models(max_results=1)  # registry store: its own first use
    except SuiteError:
        raise
    except Exception as e:  # noqa: BLE001 -- any store failure gets the same advice
        raise SuiteError(
            f"The MLflow store at {redact(current_uri())} cannot be opened: "
            f"{type(e).__name__}: {e}",
            "Check the URI and credentials (PostgreSQL needs its driver: pip install -e "
            "\".[server]\"); for the embedded store, make sure the workspace folder is writable "
            "and its mlflow.db is not from a newer MLflow (an older one: `mlflow db upgrade "
            "URI`, or `suite server start`, which upgrades it).",
        ) from None


def normalize_store_uri(uri: str) -> str:
    """A database URI as MLflow's SQLAlchemy stores should load it: ``postgres://`` and
    ``postgresql://`` get the psycopg2 driver named (``postgresql+psycopg2://``; SQLAlchemy 2.1
    would pick psycopg 3, which suite does not install); any other URI (an explicit driver,
    ``sqlite:///``, ``mysql+pymysql://``, ``http://``) is left as it is."""
    scheme, sep, rest = uri.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg2://{rest}"
    return uri


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (for state files and messages)."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password is None:
        return uri
    netloc = f"{parsed.username}:***@{parsed.hostname}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


SHARED_SCHEMES = ("http", "https", "postgresql", "mysql")


def is_shared_store(uri: str | None = None) -> bool:
    """True if ``uri`` (default: the configured one) can be shared by processes on several
    machines: an MLflow server (http/https) or a database server (PostgreSQL, MySQL, any
    ``+driver``). A SQLite file or a local folder serves one machine only."""
    uri = uri if uri is not None else current_uri()
    scheme = urllib.parse.urlparse(uri).scheme.split("+", 1)[0].lower()
    return scheme in SHARED_SCHEMES


def server_error(exc: BaseException) -> SuiteError | None:
    """The user-facing error for ``exc`` if it (or what caused it) is a failed connection to
    an http(s) tracking server, else None.

    MLflow's REST client wraps connection errors in a plain ``MlflowException`` ("API request
    to ... failed with exception ..."), the original kept as its context; the CLI passes every
    unexpected exception here once, so no stage needs its own try/except.
    """
    import requests
    import urllib3

    uri = current_uri()
    if urllib.parse.urlparse(uri).scheme not in ("http", "https"):
        return None
    gone = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            requests.exceptions.RetryError, urllib3.exceptions.HTTPError, ConnectionError)
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, gone):
            text = str(e)
            reason = ("connection refused" if "refused" in text else
                      "timed out" if "timed out" in text.lower() else
                      f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else
                      type(e).__name__)
            return SuiteError(
                f"The MLflow tracking server {uri} did not answer ({reason}); the cell that "
                "was running did not finish.",
                "Check it with `suite server status` (and its log), restart it with "
                "`suite server start ...`, then run the same command again: finished cells "
                "are kept and the study resumes where it stopped.",
            )
        e = e.__cause__ or e.__context__
    return None


def current_uri() -> str:
    return _CURRENT.tracking_uri if _CURRENT else os.environ.get("MLFLOW_TRACKING_URI", "")


def client():
    from mlflow.tracking import MlflowClient

    current()
    return MlflowClient()


# ---------------------------------------------------------------------------------------------
# experiments and runs


def experiment_id(study: str) -> str:
    """The experiment of a study (one per study), created on first use."""
    c = client()
    exp = c.get_experiment_by_name(study)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    root = current().artifact_root
    location = f"{root}/{safe_name(study)}" if root else None
    try:
        return c.create_experiment(study, artifact_location=location, tags={TAG_STUDY: study})
    except Exception:  # created concurrently by another process
        exp = c.get_experiment_by_name(study)
        if exp is None:
            raise
        return exp.experiment_id


def safe_name(name: Any) -> str:
    """A file-name component from any name: characters outside ``[A-Za-z0-9-_.]`` become
    ``_`` (``folder:/a/b`` -> ``folder__a_b``)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


# Options added after results were first keyed: at this value they are left out of the key, so
# the cells of runs made before the option existed stay the same.
NEUTRAL_PARTS = {"skip_corrupt": False}


def cell_key(**parts: Any) -> str:
    """Stable short hash of what defines a result (config values, model version, ...).
    Parts at their :data:`NEUTRAL_PARTS` value do not enter it."""
    parts = {k: v for k, v in parts.items()
             if not (k in NEUTRAL_PARTS and v == NEUTRAL_PARTS[k])}
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def find_finished_run(study: str, cell: str):
    """A FINISHED run of ``study`` tagged ``suite.cell = cell``, or None."""
    runs = client().search_runs(
        [experiment_id(study)],
        filter_string=f"tags.`{TAG_CELL}` = '{cell}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0] if runs else None


def search_runs(study: str, stage: str | None = None, extra_filter: str = "",
                max_results: int = 50000) -> list:
    """Runs of a study (optionally one stage), via the run search API with a filter string."""
    filters = []
    if stage:
        filters.append(f"tags.`{TAG_STAGE}` = '{stage}'")
    if extra_filter:
        filters.append(extra_filter)
    filters.append("attributes.status = 'FINISHED'")
    return client().search_runs([experiment_id(study)], filter_string=" and ".join(filters),
                                max_results=max_results)


def run_tags(study: str, stage: str, *, model: str = "", model_version: str = "",
             dataset: str = "", setting: str = "", cell: str = "") -> dict[str, str]:
    tags = {TAG_STUDY: study, TAG_STAGE: stage}
    for k, v in ((TAG_MODEL, model), (TAG_MODEL_VERSION, model_version), (TAG_DATASET, dataset),
                 (TAG_SETTING, setting), (TAG_CELL, cell)):
        if v:
            tags[k] = str(v)
    return tags


@contextlib.contextmanager
def start_run(study: str, run_name: str, tags: dict[str, str], nested: bool = False) -> Iterator:
    """Start (or, inside an MLflow Project, resume) a run in the study's experiment.

    The run ends FINISHED only if the body returns; an exception marks it FAILED, so a killed or
    failed cell is never mistaken for a completed one.
    """
    import mlflow

    exp = experiment_id(study)
    resume = os.environ.get("MLFLOW_RUN_ID") if not nested else None
    if resume and mlflow.active_run() is None:
        # Inside an MLflow Project: adopt the launcher's run once. Nested runs must not resume
        # it again, so the variable goes (as MLflow itself does when it consumes it).
        os.environ.pop("MLFLOW_RUN_ID", None)
        run = mlflow.start_run(run_id=resume)
        mlflow.set_tags(tags)
        if run_name:
            mlflow.set_tag("mlflow.runName", run_name)
    else:
        run = mlflow.start_run(experiment_id=exp, run_name=run_name, tags=tags, nested=nested)
    try:
        yield run
    except BaseException:
        mlflow.end_run(status="KILLED" if _interrupted() else "FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def _interrupted() -> bool:
    import sys

    return isinstance(sys.exc_info()[1], KeyboardInterrupt)


def log_config(cfg: Any, prefix: str = "") -> None:
    """Log a stage config as params: exactly ``flatten(asdict(cfg))``."""
    import mlflow

    from suite.config import flatten

    params = flatten(cfg, prefix)
    # Inside an MLflow Project the launcher already logged the entry point's parameters (same
    # values, shell-quoted); MLflow forbids re-logging a key with another value, so skip them.
    logged = client().get_run(mlflow.active_run().info.run_id).data.params
    items = [(k, v) for k, v in params.items() if k not in logged]
    for i in range(0, len(items), 100):  # log_params batches are limited in size
        mlflow.log_params(dict(items[i:i + 100]))


def log_curve(name: str, values: list[tuple[int, float]]) -> None:
    """Log a metric history (step, value) in one batch call."""
    import time

    import mlflow
    from mlflow.entities import Metric

    run = mlflow.active_run()
    now = int(time.time() * 1000)
    metrics = [Metric(name, float(v), now, int(s)) for s, v in values]
    for i in range(0, len(metrics), 1000):
        client().log_batch(run.info.run_id, metrics=metrics[i:i + 1000])


def metric_history(run_id: str, name: str) -> list[tuple[int, float]]:
    hist = client().get_metric_history(run_id, name)
    return sorted((m.step, m.value) for m in hist)


# ---------------------------------------------------------------------------------------------
# Model Registry


def registered_name(study: str, model: str) -> str:
    return f"{study}-{model}"


def register_version(run_id: str, artifact_path: str, name: str, tags: dict[str, Any],
                     model_uri: str | None = None):
    """Register ``runs:/<run_id>/<artifact_path>`` (or ``model_uri``) as a new version of
    ``name`` with ``tags``; returns the ModelVersion."""
    import mlflow

    c = client()
    try:
        c.get_registered_model(name)
    except Exception:
        with contextlib.suppress(Exception):
            c.create_registered_model(name, tags={"suite": "checkpoint"})
    uri = model_uri or f"runs:/{run_id}/{artifact_path}"
    # register_model prints "Registered model ... already exists" lines to stderr; the study's
    # own progress says what was registered.
    with contextlib.redirect_stderr(io.StringIO()):
        mv = mlflow.register_model(uri, name, tags={k: _tag(v) for k, v in tags.items()})
    return mv


def _tag(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def find_version_by_cell(name: str, cell: str):
    """The registered version of ``name`` tagged ``suite.cell = cell`` (resume), or None."""
    c = client()
    try:
        versions = c.search_model_versions(f"name = '{name}'")
    except Exception:
        return None
    for mv in versions:
        if mv.tags.get(TAG_CELL) == cell:
            return mv
    return None


def get_version(name: str, version: str | int = "latest"):
    """Resolve ``version`` ("latest", a number, or an alias) to a ModelVersion."""
    c = client()
    version = str(version)
    try:
        if version == "latest":
            versions = c.search_model_versions(f"name = '{name}'")
            if not versions:
                raise LookupError
            return max(versions, key=lambda mv: int(mv.version))
        if version.isdigit():
            return c.get_model_version(name, version)
        return c.get_model_version_by_alias(name, version)
    except Exception:
        known = sorted(rm.name for rm in c.search_registered_models(max_results=1000))
        hint = ("Registered models: " + ", ".join(known[:20]) + ("..." if len(known) > 20 else "")
                if known else "The registry is empty")
        raise SuiteError(
            f"Registered model {name!r} version {version!r} was not found in {current_uri()}.",
            f"{hint}. Register one with `suite pretrain` or `suite zoo register`, "
            "or check --workspace / MLFLOW_TRACKING_URI.",
        ) from None


def study_versions(study: str) -> list:
    """All registered versions tagged with this study (one per pretrained checkpoint)."""
    return client().search_model_versions(f"tags.`{TAG_STUDY}` = '{study}'")
