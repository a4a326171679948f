"""The tiny study in the real MLflow UI: ``suite ui`` on a free port, driven by playwright with
Debian's chromium (headless, no browser download). Screenshots go to a temporary folder named in
the log (and to ``$SUITE_ARTIFACTS_DIR`` when set). Skipped without chromium or playwright,
a failure when ``SUITE_REQUIRE_SERVICES=1`` (CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from services import free_port, missing

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("SUITE_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 60_000
ERRORS = ("Something went wrong", "Internal Server Error", "Error loading")


@pytest.fixture(scope="module")
def ui(tiny_study):
    """``suite ui`` on the tiny study's workspace; yields its base URL."""
    if not Path(CHROMIUM).exists():
        missing(f"chromium ({CHROMIUM}; apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("playwright (pip install playwright)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                              "MLFLOW_RUN_ID")}
    log = open(tiny_study / "ui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "suite", "-w", str(tiny_study), "ui",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"suite ui did not start: {(tiny_study / 'ui.log').read_text()}")
            time.sleep(0.5)
    try:
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def _ids(ws: Path) -> dict[str, str]:
    from suite import tracking

    tracking._CURRENT = None
    tracking.configure(workspace=ws)
    exp = tracking.experiment_id("tiny")
    probe = tracking.search_runs("tiny", stage="probe",
                                 extra_filter="tags.`suite.dataset` = 'synth-shapes'")[0]
    analysis = tracking.search_runs("tiny", stage="analysis")[0]
    c = tracking.client()
    best = next(rm for rm in (c.get_registered_model(f"tiny-cnn-w{w}") for w in (4, 6, 8))
                if "best-logistic" in (rm.aliases or {}))
    tracking._CURRENT = None
    return {"exp": exp, "probe": probe.info.run_id, "probe_name": probe.info.run_name,
            "analysis": analysis.info.run_id, "best": best.name,
            "best_version": str(best.aliases["best-logistic"])}


def test_study_in_the_mlflow_ui(ui, tiny_study, monkeypatch):
    from playwright.sync_api import sync_playwright

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SUITE_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)  # the tiny study's own store, not another's

    ids = _ids(tiny_study)
    shots = Path(tempfile.mkdtemp(prefix="suite-ui-shots-"))
    print(f"\nbrowser screenshots: {shots}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)

        def shot(name: str) -> None:
            body = page.inner_text("body")
            for err in ERRORS:
                assert err not in body, f"{name}: the page shows {err!r}"
            page.screenshot(path=str(shots / f"{name}.png"))

        # The experiment opens in the training view: its runs, with datasets and readable names.
        page.goto(f"{ui}/#/experiments/{ids['exp']}/runs")
        page.get_by_text(ids["probe_name"]).first.wait_for()
        page.get_by_text("pretrain cnn-w4 on synth-source").first.wait_for()
        body = page.inner_text("body")
        assert "Training runs" in body and "Dataset" in body
        for needle in ("probe cnn-w", "finetune", "scratch", "analysis", "synth-shapes"):
            assert needle in body, needle
        shot("1-experiment-runs")

        # A probe run: its dataset inputs (train/val/test of synth-shapes) and metrics.
        page.goto(f"{ui}/#/experiments/{ids['exp']}/runs/{ids['probe']}")
        page.get_by_text("test_accuracy").first.wait_for()
        page.get_by_text("synth-shapes (").first.wait_for()
        body = page.inner_text("body")
        assert "val_accuracy" in body and "suite.stage" in body
        shot("2-probe-run")

        # The registry: the study's models, a version with its tags and the best-* aliases.
        page.goto(f"{ui}/#/models")
        page.get_by_text("tiny-cnn-w4").first.wait_for()
        shot("3-registered-models")
        page.goto(f"{ui}/#/models/{ids['best']}/versions/{ids['best_version']}")
        page.get_by_text("source_top1").first.wait_for()
        body = page.inner_text("body")
        for needle in ("architecture", "bn_scale", "best-logistic", "source dataset"):
            assert needle in body, needle
        shot("4-model-version")

        # The analysis run's HTML report, rendered by the artifact viewer.
        page.goto(f"{ui}/#/experiments/{ids['exp']}/runs/{ids['analysis']}/artifacts/"
                  "report.html")
        frame = None
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while frame is None and time.monotonic() < deadline:
            frame = next((f for f in page.frames if "Correlations" in _text(f)), None)
            time.sleep(0.5)
        assert frame is not None, "the report did not render"
        text = _text(frame)
        assert "Pearson r" in text and "Do better source models transfer better" in text
        assert frame.locator("img").count() >= 1
        assert frame.evaluate("() => document.images[0].naturalWidth") > 0
        shot("5-analysis-report")
        browser.close()
    out = os.environ.get("SUITE_ARTIFACTS_DIR")
    if out:
        shutil.copytree(shots, Path(out) / "browser", dirs_exist_ok=True)
    print("screenshots: " + ", ".join(sorted(p.name for p in shots.glob("*.png"))))


def _text(frame) -> str:
    try:
        return frame.inner_text("body", timeout=1000)
    except Exception:  # noqa: BLE001 -- not loaded yet
        return ""
