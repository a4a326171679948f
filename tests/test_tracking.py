import time

import mlflow
import pytest

from suite import tracking
from suite.errors import SuiteError


def test_embedded_store_uses_absolute_paths(store):
    assert store.tracking_uri.startswith("sqlite:////")
    assert store.artifact_root.startswith("file:///")
    assert (store.workspace / "mlflow.db").exists()


def test_env_tracking_uri_wins(tmp_path, monkeypatch, store):
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking._CURRENT = None
    assert tracking.configure(workspace=tmp_path / "ws2").tracking_uri == uri


def test_unreachable_server_fails_fast(monkeypatch, store):
    tracking._CURRENT = None
    t0 = time.perf_counter()
    with pytest.raises(SuiteError) as e:
        tracking.configure(tracking_uri="http://127.0.0.1:9")
    assert time.perf_counter() - t0 < 10
    assert "unreachable" in str(e.value) and "MLFLOW_TRACKING_URI" in str(e.value)


def test_finished_runs_are_found_by_cell_and_failed_ones_are_not(store):
    with tracking.start_run("s", "ok", tracking.run_tags("s", "probe", cell="c1")):
        mlflow.log_metric("m", 1.0)
    with pytest.raises(RuntimeError):
        with tracking.start_run("s", "bad", tracking.run_tags("s", "probe", cell="c2")):
            raise RuntimeError("boom")
    assert tracking.find_finished_run("s", "c1") is not None
    assert tracking.find_finished_run("s", "c2") is None
    failed = mlflow.search_runs([tracking.experiment_id("s")], output_format="list",
                                filter_string="tags.`suite.cell` = 'c2'")
    assert failed[0].info.status == "FAILED"


def test_run_tags_and_curves(store):
    tags = tracking.run_tags("s", "finetune", model="m", model_version="3", dataset="d",
                             setting="scratch", cell="x")
    with tracking.start_run("s", "r", tags) as run:
        tracking.log_curve("curve", [(0, 10.0), (50, 20.0), (100, 30.0)])
    got = tracking.client().get_run(run.info.run_id).data.tags
    for k, v in tags.items():
        assert got[k] == v
    assert tracking.metric_history(run.info.run_id, "curve") == [(0, 10.0), (50, 20.0),
                                                                  (100, 30.0)]
    assert [r.info.run_id for r in tracking.search_runs("s", stage="finetune")] == [
        run.info.run_id]


def test_cell_key_is_stable_and_order_free():
    assert tracking.cell_key(a=1, b="x") == tracking.cell_key(b="x", a=1)
    assert tracking.cell_key(a=1) != tracking.cell_key(a=2)


def test_unknown_model_version_names_the_fix(store):
    with pytest.raises(SuiteError, match="was not found"):
        tracking.get_version("no-such-model")
