import pytest

from suite.config import (PAPER_L2_GRID, ModelConfig, ProbeBackend, ProbeConfig, Setting,
                          StudyConfig, flatten, from_dict, list_presets, load_study,
                          study_to_yaml)
from suite.errors import SuiteError


def test_paper_grid_is_45_log_spaced_values_from_1e_minus_6_to_1e5():
    assert len(PAPER_L2_GRID) == 45
    assert PAPER_L2_GRID[0] == pytest.approx(1e-6)
    assert PAPER_L2_GRID[-1] == pytest.approx(1e5)
    ratios = [b / a for a, b in zip(PAPER_L2_GRID, PAPER_L2_GRID[1:])]
    assert max(ratios) == pytest.approx(min(ratios))


def test_presets_load_and_round_trip_through_yaml(tmp_path):
    assert "mini" in list_presets()
    for name in list_presets():
        cfg = load_study(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(study_to_yaml(cfg))
        assert load_study(path) == cfg


def test_default_study_is_mini():
    assert load_study(None).name == "mini"


def test_from_dict_coerces_enums_tuples_and_nested():
    cfg = from_dict(StudyConfig, {
        "name": "x", "models": [{"name": "a", "width": 8}], "datasets": "synth-shapes",
        "settings": ["logistic"], "probe_backend": "reference",
        "finetune": {"lrs": [0.1], "steps": 10},
    })
    assert cfg.models == (ModelConfig(name="a", width=8),)
    assert cfg.datasets == ("synth-shapes",)
    assert cfg.settings == (Setting.logistic,)
    assert cfg.probe_backend is ProbeBackend.reference
    assert cfg.finetune.lrs == (0.1,) and cfg.finetune.steps == 10


@pytest.mark.parametrize("data, needle", [
    ({"modles": []}, "Unknown option(s) modles"),
    ({"models": [{"name": "a", "width": "wide"}]}, "models[0].width"),
    ({"settings": ["linear"]}, "one of: logistic, finetune, scratch"),
    ({"models": [{"width": 8}]}, "Incomplete"),
    ({"l2_grid": [1.0, float("nan")]}, "l2_grid"),
])
def test_bad_values_name_the_option(data, needle):
    with pytest.raises(SuiteError) as e:
        from_dict(StudyConfig, data)
    assert needle in str(e.value)


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nmodels:\n  - name: a\n   width: 3\n")
    with pytest.raises(SuiteError) as e:
        load_study(p)
    assert "not valid YAML" in str(e.value) and "line" in str(e.value)


def test_missing_file_and_unknown_preset():
    with pytest.raises(SuiteError, match="does not exist"):
        load_study("nope/study.yaml")
    with pytest.raises(SuiteError, match="Unknown study preset"):
        load_study("nonexistent-preset")


def test_duplicate_model_names_rejected(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("name: x\ndatasets: [synth-shapes]\nmodels:\n  - {name: a}\n  - {name: a}\n")
    with pytest.raises(SuiteError, match="appear twice"):
        load_study(p)


def test_flatten_is_what_is_logged():
    flat = flatten(ProbeConfig(model_name="m", dataset="d"))
    assert flat["model_name"] == "m"
    assert flat["backend"] == "auto"
    assert len(flat["l2_grid"].split(",")) == 45
