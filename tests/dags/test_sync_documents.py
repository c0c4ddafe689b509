"""`dag.test()` of sync_documents: a real sync of the sample data into the embedded index."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from semflow.catalog import INDEXED, Catalog
from semflow.config import get_settings
from semflow.index import open_store

pytestmark = pytest.mark.slow


def test_dag_test_syncs_sample_into_embedded_index(airflow_db, semflow_home, tmp_path, monkeypatch):
    import pandas as pd
    from airflow.dag_processing.dagbag import DagBag

    from semflow.config import REPO_ROOT

    # A 300-row slice of Banking77 keeps the run short; 3 partitions exercise .expand().
    sample = tmp_path / "bank.csv"
    pd.read_csv(REPO_ROOT / "data/banking77/train.csv").iloc[::33].head(300).to_csv(
        sample, index=False
    )
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        "sources:\n  - name: bank\n    kind: files\n"
        f"    path: {sample}\n"
        "    mapping: {id: '@row', text: text, labels: category, updated_at: null,"
        " tenant_value: bank}\n"
    )
    monkeypatch.setenv("SEMFLOW_SOURCES_FILE", str(sources))
    monkeypatch.setenv("SEMFLOW_SYNC_PARTITION_SIZE", "100")
    get_settings.cache_clear()

    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).get_dag("sync_documents")
    run = dag.test(
        logical_date=datetime(2026, 6, 1, 10, tzinfo=UTC),
        run_conf={"source": "bank", "full_refresh": False, "reconcile": True},
    )
    assert run.state == "success"
    mapped = [ti for ti in run.get_task_instances() if ti.task_id == "embed"]
    assert len(mapped) == 3 and all(ti.state == "success" for ti in mapped)

    s = get_settings()
    with open_store(s).open_live() as idx:
        assert idx.count() == 300
    assert len(Catalog(s.catalog_database_url).ids("bank", [INDEXED])) == 300

    # Idempotent: the same interval again adds nothing.
    run2 = dag.test(
        logical_date=datetime(2026, 6, 1, 10, tzinfo=UTC),
        run_conf={"source": "bank", "full_refresh": False, "reconcile": False},
    )
    assert run2.state == "success"
    with open_store(s).open_live() as idx:
        assert idx.count() == 300


def test_dag_windows_come_from_the_data_interval(
    airflow_db, semflow_home, tmp_path, monkeypatch, pg_engine
):
    """Through PostgresHook and an Airflow Connection: each run syncs only its hour."""
    import uuid

    import sqlalchemy as sa
    from airflow.dag_processing.dagbag import DagBag

    from semflow.config import REPO_ROOT
    from tests.helpers import PG_URL

    table = f"sf_dag_{uuid.uuid4().hex[:8]}"
    h1 = datetime(2026, 6, 2, 10, tzinfo=UTC)
    with pg_engine.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {table} (id int primary key, body text, ts timestamptz)"))
        c.execute(
            sa.text(f"INSERT INTO {table} VALUES (1, 'lost card', :a), (2, 'exchange rate', :b)"),
            {"a": h1.replace(minute=15), "b": h1.replace(hour=11, minute=30)},
        )
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        f"sources:\n  - name: pg\n    kind: postgres\n    conn_id: semflow_test_pg\n"
        f"    table: {table}\n    mapping: {{id: id, text: body, updated_at: ts}}\n"
    )
    monkeypatch.setenv("SEMFLOW_SOURCES_FILE", str(sources))
    monkeypatch.setenv("AIRFLOW_CONN_SEMFLOW_TEST_PG", PG_URL.replace("+psycopg2", ""))
    get_settings.cache_clear()
    try:
        dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).get_dag("sync_documents")
        conf = {"source": "pg", "full_refresh": False, "reconcile": False}
        # The first run builds generation 1 from everything, later runs are windowed.
        with pg_engine.begin() as c:
            c.execute(sa.text(f"DELETE FROM {table} WHERE id = 2"))
        assert dag.test(logical_date=h1, run_conf=conf).state == "success"
        with pg_engine.begin() as c:
            c.execute(
                sa.text(f"INSERT INTO {table} VALUES (2, 'exchange rate', :b), (3, 'old', :o)"),
                {"b": h1.replace(hour=11, minute=30), "o": h1.replace(hour=1)},
            )
        # A manual run at 12:00 covers the interval that ends then: [11:00, 12:00).
        run = dag.test(logical_date=h1.replace(hour=12), run_conf=conf)
        assert run.state == "success"
        assert (run.data_interval_start, run.data_interval_end) == (
            h1.replace(hour=11),
            h1.replace(hour=12),
        )
        with open_store(get_settings()).open_live() as idx:
            got = {p["doc_id"] for _, p in idx.iter_payloads("pg", ("doc_id",))}
        # Row 3 was written with an old timestamp: outside [11:00, 12:00), so not picked up.
        assert got == {"1", "2"}
    finally:
        with pg_engine.begin() as c:
            c.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
