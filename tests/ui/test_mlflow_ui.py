"""The MLflow UI in a real browser (Debian's chromium through selenium + chromedriver).

A real `mlflow server` (SQLite store, served artefacts) on a free port; the training pipeline
registers a version through the register stage on a small subset (as the pipeline's
integration test does, without the fine-tune: what is looked at is the registry, not the
model). Then chromium opens the model version page (alias, gate verdict, lineage tags) and the
run's `evaluation/` artefacts (the confusion matrix PNG drawn by semflow.training.figures).
Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from semflow.procs import stop_group
from tests.airflow_local import free_port
from tests.ui.browser import chromium, missing, screenshot, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    reason = missing()
    if reason:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("mlflow-ui")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}"]
    cmd += ["--artifacts-destination", str(home / "artifacts")]
    log = (home / "mlflow.log").open("w")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=home, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited:\n{(home / 'mlflow.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for("mlflow server /health", up, 600)  # 15 s on CI, minutes on a loaded machine
        yield url
    finally:
        stop_group(proc)  # the server's uvicorn worker too
        log.close()


@pytest.fixture(scope="module")
def registered(mlflow_url, tmp_path_factory):
    """Run the pipeline on the subset against the server; (experiment id, gate result)."""
    from semflow.config import get_settings
    from semflow.training import STAGES, Paths, load_pipeline_params, run_pipeline, run_stage
    from tests.integration.test_pipeline import small_overrides, small_source

    tmp = tmp_path_factory.mktemp("mlflow-ui-pipeline")
    with pytest.MonkeyPatch.context() as mp:
        # The pipeline points MLflow's process-wide URIs at this module's server, which
        # stops with the module: put them back for the tests that follow.
        mp.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None)
        mp.setattr("mlflow.tracking._model_registry.utils._registry_uri", None)
        mp.setenv("SEMFLOW_HOME", str(tmp / "home"))
        mp.setenv("SEMFLOW_MLFLOW_TRACKING_URI", mlflow_url)
        get_settings.cache_clear()
        try:
            s = get_settings()
            # No fine-tune and a small drift sample: what is looked at is the registry.
            cheap = {"finetune.enabled": False, "validate.drift.sample": 100}
            params = load_pipeline_params(overrides={**small_overrides(), **cheap})
            paths = Paths(tmp / "work")
            run_stage("snapshot", paths, params, s, source=small_source(tmp))
            out = run_pipeline(paths, params, s, stages=STAGES[1:])
            from semflow import registry

            exp = registry.client(mlflow_url).get_experiment_by_name(registry.EXPERIMENT)
            yield exp.experiment_id, out["register"], s.registered_model
        finally:
            get_settings.cache_clear()


def test_version_page_shows_alias_gate_and_lineage(mlflow_url, registered, tmp_path):
    from selenium.webdriver.common.by import By

    _, gate, name = registered
    assert gate["promoted"] is True, gate
    version = gate["version"]
    with chromium(tmp_path / "profile") as browser:
        browser.get(f"{mlflow_url}/#/models/{name}/versions/{version}")
        body = browser.find_element(By.TAG_NAME, "body")
        text = wait_for(
            "the version page with its alias and tags",
            lambda: body.text if "champion" in body.text and "gate.result" in body.text else "",
            90,
        )
        assert f"Version {version}" in text
        for tag in ("gate.result", "lineage.snapshot_md5", "lineage.mlflow_run_id"):
            assert tag in text, tag
        assert "promoted" in text
        screenshot(browser, "mlflow_model_version")


def test_run_artifacts_show_the_confusion_matrix(mlflow_url, registered, tmp_path):
    from selenium.webdriver.common.by import By

    from semflow import registry
    from semflow.training.figures import ARTIFACT_DIR, CONFUSION_PNG, PER_CLASS_F1_PNG

    exp_id, gate, name = registered
    mv = registry.client(mlflow_url).get_model_version(name, gate["version"])
    run_id = mv.run_id
    logged = {a.path for a in registry.client(mlflow_url).list_artifacts(run_id, ARTIFACT_DIR)}
    assert f"{ARTIFACT_DIR}/{CONFUSION_PNG}" in logged, logged

    # The width the PNG was drawn with (its IHDR), to know the browser shows that picture.
    local = registry.client(mlflow_url).download_artifacts(
        run_id, f"{ARTIFACT_DIR}/{CONFUSION_PNG}", str(tmp_path)
    )
    png = Path(local).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png[16:20], "big")

    with chromium(tmp_path / "profile") as browser:
        browser.get(
            f"{mlflow_url}/#/experiments/{exp_id}/runs/{run_id}/artifacts/"
            f"{ARTIFACT_DIR}/{CONFUSION_PNG}"
        )

        def previewed() -> list:
            # The artefact preview fetches the file and shows it as a blob: image; a decoded
            # image has its natural width (the page's own logos are smaller).
            return [
                img
                for img in browser.find_elements(By.TAG_NAME, "img")
                if (img.get_attribute("src") or "").startswith("blob:")
                and browser.execute_script("return arguments[0].naturalWidth", img) == width
            ]

        wait_for("the confusion matrix preview", previewed, 180, every=2)
        body = browser.find_element(By.TAG_NAME, "body").text
        assert f"{ARTIFACT_DIR}/{CONFUSION_PNG}" in body
        assert PER_CLASS_F1_PNG in body and "metrics.json" in body  # the artefact tree
        time.sleep(0.5)  # let the preview finish painting before the screenshot
        screenshot(browser, "mlflow_confusion_matrix")
