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
import functools
import hashlib
import io
import json
import logging
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from suite.errors import SuiteError

TAG_STUDY = "suite.study"
TAG_STAGE = "suite.stage"
TAG_MODEL = "suite.model"
TAG_MODEL_VERSION = "suite.model_version"
TAG_DATASET = "suite.dataset"
TAG_SETTING = "suite.setting"
TAG_CELL = "suite.cell"
TAG_PARENT_RUN = "mlflow.parentRunId"
# The experiment tag MLflow 3.x's UI reads to choose an experiment's view: without it the UI
# guesses, and a study (runs, no traces) opens in the GenAI view (traces, judges, prompts; the
# analysis run under "Evaluations"). "custom_model_development" is its model-training kind,
# which opens the runs table.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

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
        if exp.tags.get(TAG_EXPERIMENT_KIND) is None:  # a study created before the tag
            with contextlib.suppress(Exception):
                c.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return exp.experiment_id
    root = current().artifact_root
    location = f"{root}/{safe_name(study)}" if root else None
    try:
        return c.create_experiment(study, artifact_location=location,
                                   tags={TAG_STUDY: study, TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
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


def system_metrics_available() -> bool:
    """Whether training runs log MLflow's system metrics (CPU, memory, disk, network; GPU
    utilisation and memory with ``pynvml``): when ``psutil`` is installed (the optional
    ``system-metrics`` extra), unless ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is set false.
    The sampling interval is MLflow's (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``, 10 s)."""
    import importlib.util

    flag = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    return importlib.util.find_spec("psutil") is not None


@contextlib.contextmanager
def start_run(study: str, run_name: str, tags: dict[str, str], nested: bool = False,
              log_system_metrics: bool = False) -> Iterator:
    """Start (or, inside an MLflow Project, resume) a run in the study's experiment.

    The run ends FINISHED only if the body returns; an exception marks it FAILED, so a killed or
    failed cell is never mistaken for a completed one. ``log_system_metrics`` (training runs:
    pass :func:`system_metrics_available`) samples MLflow's ``system/*`` metrics while the run
    is open.
    """
    import mlflow

    exp = experiment_id(study)
    resume = os.environ.get("MLFLOW_RUN_ID") if not nested else None
    system = bool(log_system_metrics) or None  # None: MLflow's own default (off)
    if resume and mlflow.active_run() is None:
        # Inside an MLflow Project: adopt the launcher's run once. Nested runs must not resume
        # it again, so the variable goes (as MLflow itself does when it consumes it).
        os.environ.pop("MLFLOW_RUN_ID", None)
        run = mlflow.start_run(run_id=resume, log_system_metrics=system)
        mlflow.set_tags(tags)
        if run_name:
            mlflow.set_tag("mlflow.runName", run_name)
    else:
        run = mlflow.start_run(experiment_id=exp, run_name=run_name, tags=tags, nested=nested,
                               log_system_metrics=system)
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
# dataset inputs (the runs table's "Datasets" column, the run page's dataset drawer)

# Source types of the datasets a run logs: a synthetic set is its generator (name, version and
# per-part seeds, which define its tensors); an on-disk set is MLflow's "local" source (the
# file URI of its folder: an ImageFolder tree, or a paper dataset's folder under its root).
SOURCE_GENERATOR = "suite-generator"
DIGEST_CHARS = 16  # of the split's sha256 fingerprint (MLflow keeps at most 36)


@functools.lru_cache(maxsize=1)
def _dataset_classes():
    """(GeneratorSource, SplitDataset), built on first use so importing this module does not
    import MLflow. The source is registered with MLflow, so ``mlflow.data.get_source(ds)``
    rebuilds it from a run's dataset input."""
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.data.dataset_source_registry import register_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class GeneratorSource(DatasetSource):
        """A dataset generated in memory by ``suite.data.synthetic``: its name and generator
        parameters (version, image side, per-part seeds and sizes)."""

        def __init__(self, generator: str, version: int | str = "", seeds: dict | None = None,
                     size: int = 0):
            self.generator, self.version = generator, version
            self.seeds, self.size = dict(seeds or {}), size

        @staticmethod
        def _get_source_type() -> str:
            return SOURCE_GENERATOR

        def load(self, **kwargs):
            from suite.data import load_split

            return load_split(self.generator, kwargs.get("split", "train"))

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any):
            # Never reached: _can_resolve refuses every raw source (a generator source is
            # built from its parameters, or read back with from_dict, never from a URI).
            raise ValueError(f"A synthetic generator source is not resolved from {raw_source!r}; "
                             "build it with GeneratorSource(...) or from_dict().")

        def to_dict(self) -> dict[str, Any]:
            return {"generator": self.generator, "version": self.version, "seeds": self.seeds,
                    "size": self.size}

        @classmethod
        def from_dict(cls, source_dict: dict) -> GeneratorSource:
            return cls(source_dict.get("generator", ""), source_dict.get("version", ""),
                       source_dict.get("seeds"), source_dict.get("size", 0))

    class SplitDataset(MetaDataset):
        """One split of a suite dataset, as metadata: name, digest (of its fingerprint),
        source, tensor schema (image, label) where known, and a profile (images, classes)."""

        def __init__(self, source, name: str, digest: str, schema=None,
                     profile: dict | None = None):
            self._profile = profile or {}
            super().__init__(source, name=name, digest=digest)
            self._tensor_schema = schema

        @property
        def profile(self):
            return self._profile

        @property
        def schema(self):
            return self._tensor_schema

        def to_dict(self) -> dict[str, str]:
            config = super(MetaDataset, self).to_dict()  # name, digest, source, source_type
            if self._tensor_schema is not None:
                config["schema"] = json.dumps(self._tensor_schema.to_dict())
            config["profile"] = json.dumps(self._profile)
            return config

    register_dataset_source(GeneratorSource)
    return GeneratorSource, SplitDataset


def _split_schema(image_shape: tuple[int, ...] | None, multilabel: bool, num_classes: int):
    """MLflow's tensor schema of a split: images (-1, C, H, W) float32 (H, W = -1 when they
    vary) and labels (-1,) int64, or (-1, k) float32 0/1 for a multi-label set."""
    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types import Schema, TensorSpec

    shape = (-1, *image_shape) if image_shape else (-1, 3, -1, -1)
    target = (TensorSpec(np.dtype(np.float32), (-1, num_classes), "labels") if multilabel
              else TensorSpec(np.dtype(np.int64), (-1,), "label"))
    return TensorDatasetSchema(features=Schema([TensorSpec(np.dtype(np.float32), shape,
                                                           "image")]),
                               targets=Schema([target]))


def mlflow_dataset(dataset: str, split: str, *, root: str = "", seed: int = 0,
                   val_fraction: float = 0.2, loaded=None):
    """One split of ``dataset`` as an ``mlflow.data`` dataset (what :func:`log_dataset_inputs`
    logs): name = the dataset's exact id (:func:`suite.data.identity`: ``synth-shapes``,
    ``cifar10``, ``folder:/abs/tree``), digest = the first :data:`DIGEST_CHARS` characters of
    the split's fingerprint (:func:`suite.data.split_fingerprint`; equal digests, equal images
    and labels), source = the generator (synthetic sets) or the data's folder (MLflow's
    ``local`` source), schema (image / label tensors) and profile (images, classes, split).

    ``loaded``: the split as :func:`suite.data.load_split` returned it (its file list is
    fingerprinted instead of listing the folder again; its first image gives the schema's
    side); ``seed`` / ``val_fraction`` define a held-out val split as they did there."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    from suite import data

    generator_source, split_dataset = _dataset_classes()
    info = data.get_info(dataset, root)
    try:
        fp = data.split_fingerprint(dataset, split, root=root, seed=seed,
                                    val_fraction=val_fraction, loaded=loaded)
    except SuiteError:  # a dataset the registry of suite.data does not list (a test's own)
        fp = {"dataset": dataset, "split": split, "n": len(loaded) if loaded is not None else 0}
        fp["digest"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()
        if info.kind == "synthetic":
            fp["generator"] = {"size": info.image_size}
    ident = data.identity(dataset, root)
    shape = None
    if "generator" in fp:
        gen = fp["generator"]
        source = generator_source(dataset, gen.get("version", ""),
                                  {p["split"]: p["seed"] for p in gen.get("parts", [])},
                                  gen.get("size", 0))
        shape = (3, int(gen["size"]), int(gen["size"])) if gen.get("size") else None
    else:
        # Decoded on-disk images vary in size: the schema's H and W stay -1.
        source = get_dataset_source_from_json(
            json.dumps({"uri": _data_folder(dataset, root).as_uri()}), "local")
    profile = {"split": split, "num_images": int(fp.get("n", 0)),
               "num_classes": int(info.num_classes), "metric": info.metric}
    if fp.get("bytes"):
        profile["bytes"] = int(fp["bytes"])
    return split_dataset(source, name=ident["dataset"], digest=fp["digest"][:DIGEST_CHARS],
                         schema=_split_schema(shape, info.multilabel, info.num_classes),
                         profile=profile)


def _data_folder(dataset: str, root: str) -> Path:
    """The folder an on-disk dataset is read from (absolute)."""
    from suite.data import FOLDER_PREFIX

    if dataset.startswith(FOLDER_PREFIX):
        return Path(dataset[len(FOLDER_PREFIX):]).expanduser().resolve()
    from suite.data.paper import LOCATIONS

    base = Path(root).expanduser() if root else Path(".")
    return (base / LOCATIONS.get(dataset, dataset)).resolve()


def log_dataset_inputs(dataset: str, splits: Sequence[str] = ("train", "val", "test"), *,
                       root: str = "", seed: int = 0, val_fraction: float = 0.2,
                       loaded: Mapping[str, Any] | None = None) -> list:
    """Log the ``splits`` of ``dataset`` that the active run reads as its dataset inputs
    (``mlflow.log_inputs``; context = the split name), so the runs table's Datasets column
    and the run page show exactly what it used. Returns the ``mlflow.data`` datasets
    (:func:`mlflow_dataset`). ``loaded`` maps split -> the split as loaded (optional; saves
    listing on-disk folders again). Logging the same split twice is harmless: MLflow keeps one
    input per (dataset, digest) and context."""
    import mlflow

    loaded = loaded or {}
    sets = [mlflow_dataset(dataset, s, root=root, seed=seed, val_fraction=val_fraction,
                           loaded=loaded.get(s)) for s in splits]
    mlflow.log_inputs(datasets=sets, contexts=list(splits),
                      tags_list=[{"suite.split": s} for s in splits])
    return sets


def log_dataset_input(dataset: str, split: str, **kwargs: Any):
    """:func:`log_dataset_inputs` for one split; returns its ``mlflow.data`` dataset."""
    return log_dataset_inputs(dataset, (split,), **kwargs)[0]


# ---------------------------------------------------------------------------------------------
# Model Registry


def registered_name(study: str, model: str) -> str:
    return f"{study}-{model}"


def model_label(name: str, study: str = "") -> str:
    """The name a person reads for registered model ``name`` in run names: the study prefix of
    :func:`registered_name` dropped (``tiny-cnn-w4`` in study ``tiny`` -> ``cnn-w4``)."""
    prefix = f"{study}-"
    return name[len(prefix):] if study and name.startswith(prefix) and name != prefix else name


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
    describe_version(name, str(mv.version), {k: _tag(v) for k, v in tags.items()})
    return mv


# Version tags copied onto the registered model, so the registry's model list can be filtered
# by them (its search box takes ``tags.`suite.study` = 'tiny'``, ``tags.architecture = 'cnn'``).
RM_TAGS = (TAG_STUDY, VTAG_ARCH, VTAG_SOURCE, VTAG_SOURCE_TOP1)


def checkpoint_description(tags: dict[str, str]) -> str:
    """What a registered checkpoint is, in Markdown, from its version tags: architecture (and
    cnn width/depth), source dataset and top-1, the four training choices, preprocessing,
    study and run."""

    def on(key: str, default: str = "") -> str:
        return str(tags.get(key, default))

    arch = on(VTAG_ARCH, "cnn")
    shape = f" (width {on('width')}, depth {on('depth')})" if arch == "cnn" and "width" in tags \
        else ""
    origin = on("source_top1_origin")
    top1 = f"{on(VTAG_SOURCE_TOP1, '?')}%" + (f" ({origin})" if origin else "")
    choices = ", ".join(f"{c} = {on(c) if on(c) != '' else 'unknown'}" for c in VTAG_CHOICES)
    lines = [f"**{arch}**{shape} checkpoint, source dataset **{on(VTAG_SOURCE, '?')}**, "
             f"source top-1 **{top1}**.", "",
             f"- training choices: {choices}"]
    if tags.get("weights"):
        lines.append(f"- weights: `{on('weights')}`" + (f" from `{on('weights_file')}`"
                                                        if tags.get("weights_file") else ""))
    if tags.get("factory"):
        lines.append(f"- built by `{on('factory')}`, features at `{on('feature_layer')}`")
    if tags.get("image_size"):
        lines.append(f"- input: {on('image_size')} px, mean {on('input_mean')}, "
                     f"std {on('input_std')}")
    if tags.get(TAG_STUDY):
        lines.append(f"- study `{on(TAG_STUDY)}`" + (f", run `{on('run_id')}`"
                                                   if tags.get("run_id") else ""))
    return "\n".join(lines)


def describe_version(name: str, version: str, tags: dict[str, str]) -> None:
    """Give a registered version (and its registered model, one per checkpoint) the
    :func:`checkpoint_description`, and the model the :data:`RM_TAGS` of the version."""
    c = client()
    text = checkpoint_description(tags)
    c.update_model_version(name, version, description=text)
    c.update_registered_model(name, description=text)
    for key in RM_TAGS:
        if tags.get(key) not in (None, ""):
            c.set_registered_model_tag(name, key, str(tags[key]))


_ALIAS_BAD = re.compile(r"[^\w\-]")


def alias_name(text: str) -> str:
    """``text`` as a valid registered-model alias: characters outside ``[A-Za-z0-9_-]`` become
    ``-`` (MLflow's rule; ``latest`` and ``v<N>`` are reserved and get a ``-`` appended)."""
    alias = _ALIAS_BAD.sub("-", str(text)).strip("-") or "alias"
    if alias.lower() == "latest" or re.fullmatch(r"v\d+", alias, flags=re.IGNORECASE):
        alias += "-"
    return alias[:255]


def set_alias(name: str, alias: str, version: str | int, *, others: Sequence[str] = ()) -> str:
    """Point ``alias`` (made valid by :func:`alias_name`) of registered model ``name`` at
    ``version``, and remove it from the registered models ``others`` (the rest of a study's
    models, which an earlier analysis may have given it). Returns the alias."""
    c = client()
    alias = alias_name(alias)
    for other in others:
        if other == name:
            continue
        with contextlib.suppress(Exception):  # no such alias there: nothing to remove
            if alias in (c.get_registered_model(other).aliases or {}):
                c.delete_registered_model_alias(other, alias)
    c.set_registered_model_alias(name, alias, str(version))
    return alias


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
