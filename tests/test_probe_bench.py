"""The probe benchmark on its --quick size: one JSON row per backend, consistent fields."""

from __future__ import annotations

import json

import pytest

from suite.errors import SuiteError
from suite.probe import bench


pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_quick_bench_writes_json_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    grid = [10.0 ** e for e in range(0, 4)]
    rows = bench.run_bench(backends=["cpu", "reference", "sklearn", "torch_lbfgs"],
                           json_out=out, quick=True, l2_grid=grid)
    assert [r["backend"] for r in rows] == ["cpu", "reference", "sklearn", "torch_lbfgs"]
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(rows))
    need = {"n", "d", "classes", "backend", "seconds", "speedup_vs_sklearn", "test_accuracy",
            "selected_l2", "peak_mem_mb"}
    s = bench.QUICK_SIZES[0]
    for r in saved:
        assert need <= set(r)
        assert (r["n"], r["d"], r["classes"]) == (s.n_train, s.d, s.classes)
        assert r["seconds"] > 0 and r["peak_mem_mb"] >= 0
        assert r["selected_l2"] in grid and 0 <= r["test_accuracy"] <= 100
    sk = next(r for r in saved if r["backend"] == "sklearn")
    assert sk["speedup_vs_sklearn"] == pytest.approx(1.0)
    cpu = next(r for r in saved if r["backend"] == "cpu")
    assert cpu["speedup_vs_sklearn"] == pytest.approx(sk["seconds"] / cpu["seconds"])
    printed = capsys.readouterr().out
    assert "probe protocol, quick" in printed and "sklearn" in printed


def test_bench_from_features_file(tmp_path):
    import numpy as np

    from suite.probe.data import make_features

    f = make_features(60, 30, 30, 8, 3, seed=0)
    path = tmp_path / "f.npz"
    np.savez(path, **dict(zip(("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"),
                              f.as_tuple())))
    rows = bench.run_bench(backends=["cpu"], features_file=path, l2_grid=[0.1, 1.0, 10.0])
    assert len(rows) == 1 and rows[0]["n"] == 60 and rows[0]["speedup_vs_sklearn"] is None


def test_bench_rejects_unknown_backend():
    with pytest.raises(SuiteError, match="Unknown benchmark backend"):
        bench.run_bench(bench.QUICK_SIZES, ["fastest"])
