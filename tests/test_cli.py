"""The CLI: --help of every command, and bad input -> one paragraph, exit code 2."""

import time

import pytest

from suite.cli import main

COMMANDS = [[], ["study"], ["study", "run"], ["study", "show"], ["study", "list"], ["pretrain"],
            ["finetune"], ["probe"], ["analyze"], ["ui"], ["zoo"], ["zoo", "list"],
            ["zoo", "register"], ["data"], ["data", "list"], ["data", "fetch"], ["bench"],
            ["bench", "probe"], ["bench", "features"], ["bench", "analysis"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help(cmd, capsys):
    assert main([*cmd, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_study_show_prints_the_mini_preset(capsys):
    assert main(["study", "show"]) == 0
    out = capsys.readouterr().out
    assert "name: mini" in out and "synth-shapes" in out


def test_malformed_study_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["-w", str(tmp_path / "ws"), "study", "run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "Traceback" not in err


def test_unknown_dataset_and_model_in_study(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nmodels: [{name: a}]\ndatasets: [no-such-dataset]\n")
    assert main(["-w", str(tmp_path / "ws"), "study", "run", str(study)]) == 2
    assert "no-such-dataset" in capsys.readouterr().err
    study.write_text("name: s\nmodels: [{name: a, arch: resnet5000}]\ndatasets: [synth-shapes]\n")
    assert main(["-w", str(tmp_path / "ws"), "study", "run", str(study)]) == 2
    assert "resnet5000" in capsys.readouterr().err


def test_unreachable_tracking_server_is_reported_in_seconds(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from suite import tracking

    tracking._CURRENT = None
    t0 = time.perf_counter()
    code = main(["--tracking-uri", "http://127.0.0.1:9", "probe", "m", "synth-shapes"])
    assert code == 2 and time.perf_counter() - t0 < 15
    assert "unreachable" in capsys.readouterr().err
    tracking._CURRENT = None


def test_unknown_registered_model(store, capsys):
    assert main(["-w", str(store.workspace), "probe", "no-such-model", "synth-shapes"]) == 2
    assert "was not found" in capsys.readouterr().err


def test_bad_grid_values(store, capsys):
    assert main(["-w", str(store.workspace), "finetune", "m", "synth-shapes", "--lrs", "a,b",
                 "--local"]) == 2
    assert "comma-separated numbers" in capsys.readouterr().err
