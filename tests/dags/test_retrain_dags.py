"""Only real change trains: `dag.test()` of hourly syncs and validate_data under the
retraining policy, counting the Asset events that would trigger the next DAG."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from semflow.config import REPO_ROOT, get_settings
from tests.integration.test_pipeline import small_overrides, small_source

pytestmark = pytest.mark.slow

DOCUMENTS, VALIDATED = "semflow://documents", "semflow://validated-snapshot"
H0 = datetime(2026, 7, 1, 1, tzinfo=UTC)
THRESHOLD = 20


def _dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags")).get_dag(dag_id)


def _states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def _events(run, uri: str) -> list[dict]:
    """The extras of the Asset events `run` emitted for `uri` (what schedules the next DAG)."""
    import sqlalchemy as sa
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    q = (
        sa.select(AssetEvent)
        .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
        .where(
            AssetModel.uri.in_([uri, uri + "/"]),  # Airflow stores the normalised URI
            AssetEvent.source_dag_id == run.dag_id,
            AssetEvent.source_run_id == run.run_id,
        )
    )
    with create_session() as session:
        return [dict(e.extra or {}) for e in session.scalars(q)]


def _sync(hour: int):
    run = _dag("sync_documents").test(
        logical_date=H0 + timedelta(hours=hour),
        run_conf={"source": "small", "full_refresh": False, "reconcile": False},
    )
    assert run.state == "success", _states(run)
    return run


def _validate(hour: int):
    """validate_data as the Asset event of that hour's sync would start it."""
    overrides = {
        **small_overrides(),
        "retrain.min_changed_labelled": THRESHOLD,
        "retrain.drift": False,  # drift is covered by the policy's unit tests
        "retrain.max_age_days": None,
    }
    run = _dag("validate_data").test(
        logical_date=H0 + timedelta(hours=hour, minutes=30), run_conf={"overrides": overrides}
    )
    assert run.state == "success", _states(run)
    return run


def _edit(csv: Path, rows: slice) -> None:
    df = pd.read_csv(csv)
    df.loc[df.index[rows], "text"] = df.loc[df.index[rows], "text"] + " (edited)"
    df.to_csv(csv, index=False)


def test_only_changes_over_the_threshold_trigger_training(
    airflow_db, semflow_home, tmp_path, monkeypatch, caplog
):
    from semflow import registry

    csv = small_source(tmp_path).path
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        "sources:\n  - name: small\n    kind: files\n"
        f"    path: {csv}\n"
        "    mapping: {id: '@row', text: text, labels: category, updated_at: null,"
        " tenant_value: bank}\n"
    )
    monkeypatch.setenv("SEMFLOW_SOURCES_FILE", str(sources))
    get_settings.cache_clear()

    # The first sync indexes everything and announces it; the first snapshot trains.
    run = _sync(0)
    assert _events(run, DOCUMENTS) == [
        {"source": "small", "generation": 1, "indexed": 240, "deleted": 0}
    ]
    run = _validate(0)
    assert _states(run)["announce"] == "success"
    assert len(_events(run, VALIDATED)) == 1

    # Two hourly syncs with no change: no Asset event, so validate_data never starts.
    for hour in (1, 2):
        run = _sync(hour)
        assert _states(run)["announce"] == "skipped"
        assert _events(run, DOCUMENTS) == []

    # A change below the threshold is announced, validated, and does not train.
    _edit(csv, slice(0, 5))
    run = _sync(3)
    assert _events(run, DOCUMENTS) == [
        {"source": "small", "generation": 2, "indexed": 5, "deleted": 0}
    ]
    # From the log records, caught on the `semflow` logger itself: after test_pipeline's tests
    # in the same process, none of semflow's records reached the root logger, where caplog
    # listens (configure_logging() is one thing that stops them: propagate = False).
    caplog.clear()
    semflow_log = logging.getLogger("semflow")
    semflow_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="semflow"):
            run = _validate(3)
    finally:
        semflow_log.removeHandler(caplog.handler)
    assert "retraining policy: no retrain: 5 labelled documents changed" in caplog.text
    states = _states(run)
    assert (states["decide"], states["announce"]) == ("success", "skipped")
    assert _events(run, VALIDATED) == []
    decision = run.get_task_instance("decide").xcom_pull(task_ids="decide")
    assert not decision["retrain"] and decision["changed_labelled"] == 5

    # Changes since the last training add up: 5 + 20 reach the threshold, exactly one training.
    _edit(csv, slice(100, 120))
    run = _sync(4)
    assert [e["indexed"] for e in _events(run, DOCUMENTS)] == [20]
    run = _validate(4)
    events = _events(run, VALIDATED)
    assert len(events) == 1 and events[0]["retrain"] and events[0]["changed_labelled"] == 25
    assert (
        f"25 labelled documents changed since the last training (threshold {THRESHOLD})"
        in (events[0]["reason"])
    )

    # The decision and its reason are in MLflow, one `decide` run per validate_data run.
    s = get_settings()
    c = registry.client(s.tracking_uri)
    exp = c.get_experiment_by_name(registry.EXPERIMENT)
    found = c.search_runs(
        [exp.experiment_id], "tags.`semflow.stage` = 'decide'", order_by=["attributes.start_time"]
    )
    assert [r.data.tags["retrain.decision"] for r in found] == ["true", "false", "true"]
    assert found[1].data.tags["retrain.reason"] == decision["reason"]
    assert found[1].data.tags["airflow.dag_id"] == "validate_data"
    assert found[1].data.metrics["retrain.changed_labelled"] == 5
