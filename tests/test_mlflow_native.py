"""The README's registry and run queries, exactly as a user writes them, on the tiny study."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_readme_queries_return_the_study(tiny_study, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from suite import tracking

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SUITE_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)  # the tiny study's own store, not another's
    tracking._CURRENT = None
    tracking.configure(workspace=tiny_study)
    try:
        versions = MlflowClient().search_model_versions("tags.`suite.study` = 'tiny'")
        assert sorted(v.name for v in versions) == ["tiny-cnn-w4", "tiny-cnn-w6", "tiny-cnn-w8"]
        named = [v.name for v in versions
                 if "best-logistic" in (MlflowClient().get_registered_model(v.name).aliases
                                        or {})]
        assert len(named) == 1  # one best model per setting
        best = MlflowClient().get_model_version_by_alias(named[0], "best-logistic")
        assert best.tags["suite.study"] == "tiny"
        probes = mlflow.search_runs(experiment_names=["tiny"],
                                    filter_string="tags.`suite.stage` = 'probe' and "
                                                  "tags.`suite.dataset` = 'synth-shapes'")
        assert len(probes) == 3 and set(probes["status"]) == {"FINISHED"}
        assert "metrics.test_accuracy" in probes.columns
    finally:
        tracking._CURRENT = None
