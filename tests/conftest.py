"""Shared fixtures: a fresh embedded MLflow store per test (copied from one template, since
creating and migrating a SQLite store costs seconds), progress bars off."""

from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("SUITE_PROGRESS", "0")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.fixture(scope="session")
def _template_store(tmp_path_factory):
    from suite import tracking

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    ws = tmp_path_factory.mktemp("template-ws")
    tracking._CURRENT = None
    tracking.configure(workspace=ws)
    tracking._CURRENT = None
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved
    return ws / "mlflow.db"


@pytest.fixture
def store(tmp_path, monkeypatch, _template_store):
    """A configured, empty embedded store in ``tmp_path/ws``; returns the Tracking."""
    from suite import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("SUITE_WORKSPACE", raising=False)
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(_template_store, ws / "mlflow.db")
    tracking._CURRENT = None
    tr = tracking.configure(workspace=ws)
    yield tr
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    tracking._CURRENT = None
