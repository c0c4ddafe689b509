"""Start the local Airflow (`scripts/airflow_local.sh`) on a free port and drive headless
Chromium against the DAG list: every semflow DAG in dags/ is listed, no import errors.
The screenshot is kept under tests/artifacts/ as the test's artefact."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.airflow_local import DAG_IDS, get_json, local_airflow

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CHROME_FLAGS += ["--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=20000"]


@pytest.fixture(scope="module")
def airflow_url(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    home = tmp_path_factory.mktemp("airflow-ui")
    # The DAG list needs the api-server and the dag-processor only; fewer processes on 2 cores.
    with local_airflow(home, "dag-processor", SEMFLOW_HOME=str(home / "semflow")) as (url, _):
        yield url


def test_rest_api_lists_every_dag_without_import_errors(airflow_url):
    dags = get_json(f"{airflow_url}/api/v2/dags?limit=100")["dags"]
    by_id = {d["dag_id"]: d for d in dags}
    for dag_id in DAG_IDS:
        assert dag_id in by_id
        assert "semflow" in {t["name"] for t in by_id[dag_id]["tags"]}
    errors = get_json(f"{airflow_url}/api/v2/importErrors")
    assert errors["total_entries"] == 0, errors["import_errors"]


def test_dag_list_page_in_headless_chromium(airflow_url, tmp_path):
    page = f"{airflow_url}/dags"
    dom = subprocess.run(
        [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    text = re.sub(r"<[^>]+>", " ", dom)
    for dag_id in DAG_IDS:
        assert re.search(rf"\b{dag_id}\b", text), f"{dag_id} is not shown on {page}"
    # The React UI shows a "Dag Import Error(s)" button when any file fails to import.
    assert "Dag Import Error" not in text

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "airflow_dag_list.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [
            CHROMIUM,
            *CHROME_FLAGS,
            f"--user-data-dir={tmp_path / 'profile2'}",
            "--window-size=1400,1000",
            f"--screenshot={shot}",
            page,
        ],
        capture_output=True,
        timeout=90,
        check=True,
    )
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
