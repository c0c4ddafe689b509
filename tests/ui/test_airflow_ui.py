"""The local Airflow (`scripts/airflow_local.sh`, what `make airflow` starts) driven in a real
browser: Debian's chromium through selenium + /usr/bin/chromedriver.

One Airflow per module (api-server, scheduler, dag-processor). The DAG list shows every semflow
DAG without import errors; `sync_documents` is triggered from the UI's trigger form with params
(source, full_refresh) and runs to success; its graph shows the mapped embed tasks, its docs
render; a backfill started from the same dialog runs to success too. Screenshots are kept under
tests/artifacts/ as the tests' artefacts.

The source is a 40-row slice of the bundled sample (a `files` source in a sources file of the
test's own), in two partitions, so the run embeds little and the mapping still fans out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.airflow_local import DAG_IDS, get_json, local_airflow
from tests.ui.browser import chromium, missing, screenshot, wait_for

pytestmark = pytest.mark.slow

DAG = "sync_documents"
SOURCE = "ui_small"
ROWS, PARTITION = 40, 20  # two mapped embed tasks
RUN_TIMEOUT = 900  # seconds for one DAG run: about a minute on CI, far more on a loaded machine
UI_TIMEOUT = 180  # seconds for the UI to show what the API already has


def _sources_file(home: Path) -> Path:
    from semflow.config import SAMPLE_DIR

    df = pd.read_csv(SAMPLE_DIR / "train.csv")
    keep = sorted(df["category"].unique())[:4]
    small = df[df["category"].isin(keep)].groupby("category").head(ROWS // 4)
    small.to_csv(home / "small.csv", index=False)
    spec = home / "sources.yaml"
    # `banking77` (the DAG's default source) names the same slice: Airflow 3.3's backfill
    # dialog starts its runs with an empty conf (the form's params are not sent), so they
    # sync the default source; here that must not be the 10k-row sample.
    entry = (
        "  - name: {}\n    kind: files\n    path: " + str(home / "small.csv") + "\n"
        "    tenant: bank\n    mapping: {{id: '@row', text: text, labels: category,"
        " type_value: support_query, updated_at: null}}\n"
    )
    spec.write_text("sources:\n" + entry.format(SOURCE) + entry.format("banking77"))
    return spec


@pytest.fixture(scope="module")
def airflow_url(tmp_path_factory):
    reason = missing()
    if reason:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("airflow-ui")
    env = {
        "SEMFLOW_HOME": str(home / "semflow"),
        "SEMFLOW_SOURCES_FILE": str(_sources_file(home)),
        "SEMFLOW_SYNC_PARTITION_SIZE": str(PARTITION),
        # Unpausing from the trigger form must not also start the hourly schedule's latest
        # interval (on the full sample); runs come from the form only.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # One api-server worker answers the tasks' heartbeats while they embed on the same
        # cores: on a busy runner the default 5 s timeout x 3 tries kills healthy tasks.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
        "AIRFLOW__WORKERS__MAX_FAILED_HEARTBEATS": "10",
    }
    # The scheduler runs the tasks (LocalExecutor); no deferrable task needs a triggerer.
    with local_airflow(home, "scheduler dag-processor", **env) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(airflow_url, tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def _by():
    from selenium.webdriver.common.by import By

    return By


def _open_dialog(driver: Any, url: str) -> Any:
    """The DAG page's trigger dialog, open."""
    by = _by()
    driver.get(f"{url}/dags/{DAG}")
    driver.find_element(by.CSS_SELECTOR, "button[aria-label='Trigger Dag']").click()
    return driver.find_element(by.CSS_SELECTOR, "[role=dialog][data-state=open]")


def _fill_params(driver: Any, dialog: Any, source: str, full_refresh: bool) -> None:
    """The dialog's "Run Parameters" form: one field per DAG Param (`element_<name>`)."""
    from selenium.webdriver.common.keys import Keys

    by = _by()
    field = dialog.find_element(by.ID, "element_source")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(source)
    switch = dialog.find_element(by.NAME, "element_full_refresh")
    if switch.is_selected() != full_refresh:
        # The checkbox is hidden behind Chakra's switch: a person clicks its label.
        switch.find_element(by.XPATH, "./ancestor::label[1]").click()
    assert switch.is_selected() == full_refresh
    assert field.get_attribute("value") == source
    unpause = dialog.find_elements(by.XPATH, ".//label[contains(., 'Unpause')]//input")
    if unpause and not unpause[0].is_selected():  # DAGs are paused at creation
        unpause[0].find_element(by.XPATH, "./ancestor::label[1]").click()


def _button(dialog: Any, text: str) -> Any:
    buttons = [b for b in dialog.find_elements(_by().TAG_NAME, "button") if b.text.strip() == text]
    assert buttons, f"no {text!r} button in the dialog: {dialog.text[:500]}"
    return buttons[-1]


def _api(url: str) -> dict:
    return get_json(url, timeout=60)  # the api-server shares 2 cores with the running tasks


def _runs(url: str) -> list[dict]:
    return _api(f"{url}/api/v2/dags/{DAG}/dagRuns?limit=50")["dag_runs"]


def _wait_done(url: str, run_ids: set[str]) -> list[dict]:
    def finished() -> list[dict] | None:
        runs = [r for r in _runs(url) if r["dag_run_id"] in run_ids]
        return runs if runs and all(r["state"] in ("success", "failed") for r in runs) else None

    runs = wait_for(f"runs {sorted(run_ids)} to finish", finished, RUN_TIMEOUT, every=3)
    for r in runs:
        tis = _api(f"{url}/api/v2/dags/{DAG}/dagRuns/{r['dag_run_id']}/taskInstances")
        states = {(t["task_id"], t["map_index"]): t["state"] for t in tis["task_instances"]}
        assert r["state"] == "success", (r["dag_run_id"], states)
    return runs


def test_rest_api_lists_every_dag_without_import_errors(airflow_url):
    dags = get_json(f"{airflow_url}/api/v2/dags?limit=100")["dags"]
    by_id = {d["dag_id"]: d for d in dags}
    for dag_id in DAG_IDS:
        assert dag_id in by_id
        assert "semflow" in {t["name"] for t in by_id[dag_id]["tags"]}
    errors = get_json(f"{airflow_url}/api/v2/importErrors")
    assert errors["total_entries"] == 0, errors["import_errors"]


def test_dag_list_page_shows_every_dag_and_no_import_error(airflow_url, browser):
    by = _by()
    browser.get(f"{airflow_url}/dags")
    body = browser.find_element(by.TAG_NAME, "body")
    text = wait_for(
        "every DAG on the list page",
        lambda: body.text if all(re.search(rf"\b{d}\b", body.text) for d in DAG_IDS) else None,
        UI_TIMEOUT,
    )
    # The React UI shows a "Dag Import Error(s)" button when any file fails to import.
    assert "Dag Import Error" not in text
    screenshot(browser, "airflow_dag_list")


def test_trigger_form_with_params_runs_sync_to_success(airflow_url, browser):
    by = _by()
    before = {r["dag_run_id"] for r in _runs(airflow_url)}
    dialog = _open_dialog(browser, airflow_url)
    assert "Single Run" in dialog.text and "Run Parameters" in dialog.text
    _fill_params(browser, dialog, SOURCE, full_refresh=True)
    screenshot(browser, "airflow_trigger_form")
    _button(dialog, "Trigger").click()

    # The run carries the form's params as its conf; the UI navigates to it.
    new = wait_for(
        "the triggered run",
        lambda: [r for r in _runs(airflow_url) if r["dag_run_id"] not in before],
        UI_TIMEOUT,
    )
    wait_for("the run's page", lambda: "/runs/" in browser.current_url, UI_TIMEOUT)
    assert len(new) == 1 and new[0]["run_type"] == "manual"
    assert new[0]["conf"]["source"] == SOURCE and new[0]["conf"]["full_refresh"] is True
    run_id = new[0]["dag_run_id"]
    _wait_done(airflow_url, {run_id})

    tis = _api(f"{airflow_url}/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances")
    embeds = [t for t in tis["task_instances"] if t["task_id"] == "embed"]
    assert sorted(t["map_index"] for t in embeds) == [0, 1]
    apply = next(t for t in tis["task_instances"] if t["task_id"] == "apply")
    assert apply["state"] == "success"

    # The run's graph: every task green, the mapped embed shown with its count.
    browser.get(f"{airflow_url}/dags/{DAG}/runs/{run_id}")
    browser.find_element(by.CSS_SELECTOR, "button[aria-label='Show Graph (Press g)']").click()
    body = browser.find_element(by.TAG_NAME, "body")
    wait_for("embed [2] in the graph", lambda: "embed [2]" in body.text, UI_TIMEOUT)
    text = body.text
    for task in ("plan", "partitions", "apply", "announce"):
        assert re.search(rf"\b{task}\b", text), task
    assert "Success" in text and "Failed" not in text
    screenshot(browser, "airflow_sync_graph")

    # The grid view of the same run lists the two mapped embed instances.
    browser.find_element(by.CSS_SELECTOR, "button[aria-label='Show Grid (Press g)']").click()
    wait_for("the grid", lambda: "Task Instances" in body.text, UI_TIMEOUT)
    screenshot(browser, "airflow_sync_grid")

    # The DAG's docs (doc_md) rendered as markdown: the heading is a heading.
    browser.get(f"{airflow_url}/dags/{DAG}")
    browser.find_element(by.CSS_SELECTOR, "button[aria-label='Dag Docs']").click()
    docs = browser.find_element(by.CSS_SELECTOR, "[role=dialog][data-state=open]")
    headings = [h.text for h in docs.find_elements(by.CSS_SELECTOR, "h1,h2,h3")]
    assert "Sync documents into the vector index" in headings
    assert "uuid5(source, doc_id)" in docs.text
    screenshot(browser, "airflow_sync_docs")


def _pick_datetime(browser: Any, dialog: Any, index: int, day: str, hm: str) -> None:
    """Airflow's date-time picker: a popover with a date and a time field."""
    from selenium.webdriver.common.keys import Keys

    by = _by()
    dialog.find_elements(by.CSS_SELECTOR, "[data-testid=datetime-input]")[index].click()
    popover = browser.find_elements(by.CSS_SELECTOR, "[role=dialog][data-state=open]")[-1]
    for placeholder, value in (("YYYY/MM/DD", day), ("HH:mm", hm)):
        field = popover.find_element(by.CSS_SELECTOR, f"input[placeholder='{placeholder}']")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(value)
    field.send_keys(Keys.ENTER)
    browser.find_element(by.TAG_NAME, "body").send_keys(Keys.ESCAPE)  # close the popover
    wait_for(
        f"{day} {hm} in the date range",
        lambda: len(browser.find_elements(by.CSS_SELECTOR, "[role=dialog][data-state=open]")) == 1,
        UI_TIMEOUT,
        every=0.3,
    )


def test_backfill_from_the_trigger_dialog_runs_to_success(airflow_url, browser):
    by = _by()
    before = {r["dag_run_id"] for r in _runs(airflow_url)}
    dialog = _open_dialog(browser, airflow_url)
    dialog.find_element(by.XPATH, ".//input[@value='backfill']/ancestor::label[1]").click()
    wait_for("the backfill form", lambda: "Date Range" in dialog.text, UI_TIMEOUT)
    # One hourly interval of a past day: the range's start is the one logical date in it.
    _pick_datetime(browser, dialog, 0, "2026/11/02", "10:00")
    _pick_datetime(browser, dialog, 1, "2026/11/02", "10:30")
    wait_for("the dry run's count", lambda: "1 run will be triggered" in dialog.text, UI_TIMEOUT)
    _fill_params(browser, dialog, SOURCE, full_refresh=False)
    screenshot(browser, "airflow_backfill_form")
    _button(dialog, "Run Backfill").click()

    new = wait_for(
        "the backfill's run",
        lambda: [r for r in _runs(airflow_url) if r["dag_run_id"] not in before],
        UI_TIMEOUT,
    )
    assert [r["run_type"] for r in new] == ["backfill"]
    # The params filled in the form do not reach the run (Airflow 3.3's backfill dialog),
    # which syncs the DAG's default source; a later Airflow that sends them passes too.
    assert new[0]["conf"].get("source", SOURCE) == SOURCE, new[0]
    assert new[0]["logical_date"].startswith("2026-11-02T")  # the past day picked, not now
    _wait_done(airflow_url, {new[0]["dag_run_id"]})

    def completed() -> list[dict]:
        backfills = _api(f"{airflow_url}/api/v2/backfills?dag_id={DAG}")["backfills"]
        return backfills if backfills and backfills[0]["completed_at"] else []

    assert len(wait_for("the backfill to complete", completed, UI_TIMEOUT)) == 1
