"""Shared fixtures: a fresh embedded MLflow store per test (copied from one template, since
creating and migrating a SQLite store costs seconds), progress bars off, single-threaded runs."""

from __future__ import annotations

import contextlib
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


@pytest.fixture(scope="session")
def fresh_store(_template_store):
    """``fresh_store(root) -> Tracking``: an empty embedded store in ``root`` (schema copied
    from the session's template), configured as the current one."""
    from suite import tracking

    def make(root):
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SUITE_WORKSPACE"):
            os.environ.pop(var, None)
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(_template_store, root / "mlflow.db")
        tracking._CURRENT = None
        return tracking.configure(workspace=root)

    return make


@pytest.fixture
def store(tmp_path, monkeypatch, fresh_store):
    """A configured, empty embedded store in ``tmp_path/ws``; returns the Tracking."""
    from suite import tracking

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SUITE_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)  # restored after the test
    tr = fresh_store(tmp_path / "ws")
    yield tr
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    tracking._CURRENT = None


@contextlib.contextmanager
def single_thread():
    """torch's intra-op pool and the OpenMP / BLAS pools of NumPy and scikit-learn at one
    thread. Tiny tensors gain nothing from threads, and on a busy machine every OpenMP barrier
    can wait a whole scheduler slice."""
    import torch
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """Run one test single-threaded (see :func:`single_thread`)."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """Run a whole module single-threaded, its module-scoped data fixtures included."""
    with single_thread():
        yield


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache (TORCH_HOME under tmp_path). torchvision's weights loader
    reads files placed there; a cache miss fails as on an offline machine (no download)."""
    import urllib.error
    from pathlib import Path

    import torch
    import torchvision.models._api as tv_api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    real_load = tv_api.load_state_dict_from_url

    def cache_only(url, *a, **k):
        if not (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).exists():
            raise urllib.error.URLError("offline")
        return real_load(url, *a, **k)

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", cache_only)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, fresh_store):
    """The ``tiny`` preset study run once per session through the CLI (about a minute); returns
    its workspace. Tests that read it call ``tracking.configure(workspace=...)`` first and must
    not write to it."""
    from suite import tracking
    from suite.cli import main

    ws = tmp_path_factory.mktemp("tiny-study")
    saved = {v: os.environ.get(v) for v in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID",
                                            "SUITE_WORKSPACE")}
    fresh_store(ws)
    with single_thread():
        assert main(["-w", str(ws), "-q", "study", "run", "tiny"]) == 0
    tracking._CURRENT = None
    for var, value in saved.items():
        os.environ.pop(var, None)
        if value is not None:
            os.environ[var] = value
    return ws
