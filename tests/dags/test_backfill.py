"""`airflow backfill create` against a running local Airflow (api-server, scheduler,
dag-processor): one sync run per hour of the window, each syncing only its own hour; a
second backfill of the same window (reprocessing completed runs) changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from semflow.app import Services
from tests.airflow_local import get_json, local_airflow, logs

pytestmark = [pytest.mark.slow, pytest.mark.integration]

T0 = datetime(2026, 5, 1, tzinfo=UTC)
HOURS = 3


def _rows(tmp: Path) -> pd.DataFrame:
    sample = pd.read_csv(Path(__file__).resolve().parents[2] / "data/banking77/train.csv")
    rows = sample.iloc[::50].head(20 * (HOURS + 2)).reset_index(drop=True)
    # 20 rows an hour: one hour before the window (synced first), the window's hours 00..02,
    # and one hour after it (outside every backfill run: never synced).
    rows["updated_at"] = [
        (T0 + timedelta(hours=i // 20 - 1, minutes=i % 20)).isoformat() for i in range(len(rows))
    ]
    rows["id"] = [f"r{i}" for i in range(len(rows))]
    return rows


def _bootstrap(home: Path, sources: Path, rows: pd.DataFrame, docs: Path) -> None:
    """Generation 1 from the rows before the window (a first sync indexes all it sees)."""
    from semflow.config import load_settings
    from semflow.sources.spec import build_source, load_specs
    from semflow.sync import run_sync

    rows.head(20).to_csv(docs, index=False)
    s = load_settings(home=home)
    run_sync(build_source(load_specs(sources)["bf"]), Services.from_settings(s))
    rows.to_csv(docs, index=False)


AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def _airflow(env: dict, *args: str) -> None:
    proc = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _backfill(env: dict, *extra: str) -> None:
    cmd = ["backfill", "create"]
    cmd += ["--dag-id", "sync_documents", "--from-date", T0.isoformat()]
    cmd += ["--to-date", (T0 + timedelta(hours=HOURS - 1)).isoformat(), *extra]
    conf = json.dumps({"source": "bf", "full_refresh": False, "reconcile": False})
    _airflow(env, *cmd, "--dag-run-conf", conf)


def _wait_backfills(url: str, home: Path, n: int, timeout_s: float = 480) -> list[dict]:
    """Wait until `n` backfills are complete; return the DAG's runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fills = get_json(f"{url}/api/v2/backfills?dag_id=sync_documents")["backfills"]
        runs = get_json(f"{url}/api/v2/dags/sync_documents/dagRuns?limit=100")["dag_runs"]
        runs = [r for r in runs if r["run_type"] == "backfill"]  # not the unpaused schedule
        finished = all(r["state"] in ("success", "failed") for r in runs)
        if len(fills) == n and all(f["completed_at"] for f in fills) and finished:
            return runs
        time.sleep(3)
    raise AssertionError(f"backfill did not finish in time: {fills} {runs}\n{logs(home)}")


def _index_state(semflow_home: Path) -> tuple[int, int, set[str]]:
    """(live generation, points, doc ids)."""
    from semflow.config import load_settings
    from semflow.index import open_store

    with open_store(load_settings(home=semflow_home)).open_live() as idx:
        ids = {p["doc_id"] for _, p in idx.iter_payloads(fields=["doc_id"])}
        return idx.generation, idx.count(), ids


@pytest.fixture
def airflow_pg_db() -> str:
    """A fresh PostgreSQL database for Airflow's metadata (SQLite locks under a scheduler and
    a CLI writing at once; deployments use PostgreSQL anyway)."""
    import sqlalchemy as sa

    from tests.helpers import PG_URL

    name = "semflow_airflow_backfill"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    yield sa.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def test_backfill_create_syncs_each_hour_once_and_is_idempotent(
    tmp_path: Path, airflow_pg_db: str
) -> None:
    rows, docs = _rows(tmp_path), tmp_path / "docs.csv"
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        "sources:\n  - name: bf\n    kind: files\n"
        f"    path: {docs}\n"
        "    mapping: {id: id, text: text, labels: category, updated_at: updated_at,"
        " tenant_value: bank}\n"
    )
    home = tmp_path / "semflow"
    _bootstrap(home, sources, rows, docs)
    with local_airflow(
        tmp_path,
        "scheduler dag-processor",
        SEMFLOW_HOME=str(home),
        SEMFLOW_SOURCES_FILE=str(sources),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow_pg_db,
    ) as (url, env):
        _airflow(env, "dags", "unpause", "sync_documents")  # a paused DAG's runs never start
        _backfill(env)
        runs = _wait_backfills(url, tmp_path, 1)
        assert len(runs) == HOURS and {r["state"] for r in runs} == {"success"}, runs
        assert {r["run_type"] for r in runs} == {"backfill"}
        starts = sorted(r["data_interval_start"] for r in runs)
        assert [datetime.fromisoformat(s.replace("Z", "+00:00")) for s in starts] == [
            T0 + timedelta(hours=h) for h in range(HOURS)
        ]
        first = _index_state(home)
        # the bootstrap hour plus each window hour; the hour after the window is not synced
        assert first[1:] == (20 * (HOURS + 1), {f"r{i}" for i in range(20 * (HOURS + 1))})

        # The same window again, completed runs reprocessed: the same points, and no new
        # generation (unchanged documents are skipped, a no-op run publishes nothing).
        _backfill(env, "--reprocess-behavior", "completed")
        runs = _wait_backfills(url, tmp_path, 2)
        assert {r["state"] for r in runs} == {"success"}, runs
        assert _index_state(home) == first
