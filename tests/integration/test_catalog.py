"""The catalog database when several syncs open a new one at the same moment."""

from __future__ import annotations

import multiprocessing as mp
import traceback
import uuid

import pytest
import sqlalchemy as sa

from semflow.catalog import Catalog
from tests.helpers import PG_URL

pytestmark = pytest.mark.integration
PROCESSES = 8


def _open_and_start(url: str, barrier, results) -> None:
    barrier.wait()
    try:
        Catalog(url).start_run("notes", (None, None), "full")
        results.put("ok")
    except Exception:
        results.put(traceback.format_exc()[-1500:])


def _race(url: str) -> list[str]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=_open_and_start, args=(url, barrier, results)) for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


def _assert_all_started(url: str, out: list[str]) -> None:
    assert [r for r in out if r != "ok"] == []
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM sf_sync_runs")).scalar() == PROCESSES


@pytest.mark.parametrize("attempt", range(3))
def test_new_sqlite_catalog_opened_by_many_processes(tmp_path, attempt):
    url = f"sqlite:///{tmp_path}/catalog.db"
    _assert_all_started(url, _race(url))


def test_new_postgres_catalog_opened_by_many_processes():
    name = f"sf_catalog_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        _assert_all_started(url, _race(url))
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
