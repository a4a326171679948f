"""Real services for tests: fresh PostgreSQL databases and a running ``suite server``.

``SUITE_TEST_POSTGRES_URI`` (exported by ``.ci/services.sh``) names a database on a PostgreSQL
server the tests may create databases on. Without it a test that needs PostgreSQL is skipped,
unless ``SUITE_REQUIRE_SERVICES=1`` (CI sets it): then it fails, so a CI run without its
services can never pass by skipping.

Use from a test module::

    from services import running_server       # functions
    pytest_plugins = ("services",)            # fixtures: postgres_db, suite_server

- ``postgres_db`` (fixture): the URI of a new, empty-but-migrated database (a copy of one
  migrated template, since MLflow's ~20 s schema migration would otherwise run per test);
- ``running_server(workspace, backend_store_uri)``: a context manager that starts a real
  ``suite server`` (``mlflow server``, one uvicorn worker) on a free port and stops it after;
- ``suite_server`` (fixture): a running server on a fresh PostgreSQL database, with
  ``MLFLOW_TRACKING_URI`` pointing at it for the test.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
import uuid
from pathlib import Path
from typing import Iterator, NoReturn

import pytest

ENV_POSTGRES = "SUITE_TEST_POSTGRES_URI"
ENV_REQUIRE = "SUITE_REQUIRE_SERVICES"


def services_required() -> bool:
    return os.environ.get(ENV_REQUIRE, "") not in ("", "0")


def missing(what: str) -> NoReturn:
    """Skip the test for a missing service, or fail it when services are required."""
    msg = f"{what} is not available"
    if services_required():
        pytest.fail(f"{msg}, and {ENV_REQUIRE}=1 requires it (start it: . .ci/services.sh && "
                    "start_services)", pytrace=False)
    pytest.skip(f"{msg} (. .ci/services.sh && start_services)")


def postgres_uri() -> str:
    """The PostgreSQL URI from the environment (skip or fail without it)."""
    uri = os.environ.get(ENV_POSTGRES)
    if not uri:
        missing(f"PostgreSQL ({ENV_POSTGRES})")
    import psycopg2

    try:
        psycopg2.connect(_dsn(uri), connect_timeout=5).close()
    except psycopg2.OperationalError as e:
        missing(f"PostgreSQL at {uri} ({str(e).strip().splitlines()[0]})")
    return uri


def _dsn(uri: str, database: str | None = None) -> str:
    """A libpq URI (psycopg2 does not read SQLAlchemy's ``+driver`` suffix)."""
    parsed = urllib.parse.urlsplit(uri)
    scheme = "postgresql"
    path = f"/{database}" if database else parsed.path
    return urllib.parse.urlunsplit((scheme, parsed.netloc, path, "", ""))


def with_database(uri: str, database: str) -> str:
    """``uri`` with its database replaced."""
    parsed = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, f"/{database}", "", ""))


def create_database(template: str | None = None) -> str:
    """A new database on the test PostgreSQL server (optionally a copy of ``template``);
    returns its ``postgresql://`` URI."""
    import psycopg2

    base = postgres_uri()
    name = f"suite_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(_dsn(base), connect_timeout=5)
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(f"create database {name}" + (f" template {template}" if template else ""))
    finally:
        conn.close()
    return with_database(base, name)


def drop_database(uri: str) -> None:
    import psycopg2

    name = urllib.parse.urlsplit(uri).path.lstrip("/")
    conn = psycopg2.connect(_dsn(postgres_uri()), connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"drop database if exists {name} with (force)")
    finally:
        conn.close()


_TEMPLATE: dict[str, str] = {}


def migrated_template() -> str:
    """The name of a database holding MLflow's migrated schema (made once per session)."""
    if "name" not in _TEMPLATE:
        from suite import server

        uri = create_database()
        server.migrate_store(uri)
        _TEMPLATE["name"] = urllib.parse.urlsplit(uri).path.lstrip("/")
    return _TEMPLATE["name"]


def fresh_postgres_db() -> str:
    """A new database with MLflow's schema, copied from the session's template."""
    return create_database(template=migrated_template())


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A fresh migrated PostgreSQL database's ``postgresql://`` URI; dropped afterwards."""
    uri = fresh_postgres_db()
    yield uri
    with contextlib.suppress(Exception):
        drop_database(uri)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(workspace: Path, backend_store_uri: str | None = None, *,
                   port: int | None = None, workers: int = 1):
    """A real ``suite server`` for ``workspace`` (stopped, SIGKILL if need be, on exit).
    Yields its :class:`suite.server.ServerState`."""
    from suite import server

    state, _ = server.start_server(workspace, backend_store_uri, port=port or free_port(),
                                   workers=workers, timeout=180)
    try:
        yield state
    finally:
        server.stop_server(workspace, grace=5)


@pytest.fixture
def suite_server(tmp_path, monkeypatch, postgres_db):
    """A running ``suite server`` on a fresh PostgreSQL database (workspace
    ``tmp_path/server-ws``), the current tracking URI for the test."""
    from suite import tracking

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SUITE_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)
    with running_server(tmp_path / "server-ws", postgres_db) as state:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", state.url)
        tracking._CURRENT = None
        yield state
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run()
        tracking._CURRENT = None
