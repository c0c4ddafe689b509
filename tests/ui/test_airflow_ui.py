"""Start the local Airflow (`scripts/airflow_local.sh`) on a free port and drive headless
Chromium against the DAG list: every semflow DAG in dags/ is listed, no import errors.
The screenshot is kept under tests/artifacts/ as the test's artefact."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
DAG_IDS = sorted(p.stem for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CHROME_FLAGS += ["--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=20000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def airflow_url(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    home = tmp_path_factory.mktemp("airflow-ui")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(
        AIRFLOW_HOME=str(home / "airflow"),
        AIRFLOW_PORT=str(port),
        SEMFLOW_HOME=str(home / "semflow"),
        # The DAG list needs the api-server and the dag-processor only; fewer processes on 2 cores.
        SEMFLOW_AIRFLOW_COMPONENTS="dag-processor",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
    )
    log = (home / "airflow_local.log").open("w")
    proc = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "airflow_local.sh")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the script's children die with its process group
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 100
        listed: set[str] = set()
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                listed = {d["dag_id"] for d in _get_json(f"{url}/api/v2/dags?limit=100")["dags"]}
            except OSError:
                listed = set()
            if set(DAG_IDS) <= listed:
                break
            time.sleep(2)
        if not set(DAG_IDS) <= listed:
            logs = (home / "airflow_local.log").read_text()[-3000:]
            for f in sorted((home / "airflow" / "logs").glob("*.log")):
                logs += f"\n--- {f.name}\n" + f.read_text()[-2000:]
            pytest.fail(f"DAGs not listed in time (got {sorted(listed)}); logs:\n{logs}")
        yield url
    finally:
        with_timeout = time.monotonic() + 20
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            while proc.poll() is None and time.monotonic() < with_timeout:
                time.sleep(0.2)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()


def test_rest_api_lists_every_dag_without_import_errors(airflow_url):
    dags = _get_json(f"{airflow_url}/api/v2/dags?limit=100")["dags"]
    by_id = {d["dag_id"]: d for d in dags}
    for dag_id in DAG_IDS:
        assert dag_id in by_id
        assert "semflow" in {t["name"] for t in by_id[dag_id]["tags"]}
    errors = _get_json(f"{airflow_url}/api/v2/importErrors")
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
