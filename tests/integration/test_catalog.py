"""The catalog database when several syncs open a new one at the same moment."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import traceback
import uuid
from collections.abc import Iterator

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


def _race(url: str, target=_open_and_start, n: int = PROCESSES) -> list[str]:
    """Run `target(url, barrier, results)` in `n` processes released at the same moment."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(url, barrier, results)) for _ in range(n)]
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


@contextlib.contextmanager
def _new_postgres_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    name = f"sf_catalog_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def test_new_postgres_catalog_opened_by_many_processes():
    with _new_postgres_database() as url:
        _assert_all_started(url, _race(url))


_LEGACY = """
CREATE TABLE sf_documents (
    source VARCHAR(200) NOT NULL, doc_id VARCHAR(512) NOT NULL, point_id VARCHAR(36) NOT NULL,
    tenant VARCHAR(200) NOT NULL, content_hash VARCHAR(64), model_version VARCHAR(200),
    generation INTEGER, status VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL,
    last_error TEXT, truncated BOOLEAN NOT NULL, source_updated_at TIMESTAMP WITH TIME ZONE,
    run_id INTEGER, changed_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (source, doc_id)
)"""


def _open_and_read(url: str, barrier, results) -> None:
    barrier.wait()
    try:
        state = Catalog(url).states("notes", ["a"])["a"]
        results.put("ok" if state.embedder_version == "mini@0123456789ab" else repr(state))
    except Exception:
        results.put(traceback.format_exc()[-1500:])


def _legacy_upgrade(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(_LEGACY))
        conn.execute(
            sa.text(
                "INSERT INTO sf_documents VALUES ('notes', 'a', 'p', 'bank', 'h', "
                "'mini@0123456789ab', 1, 'indexed', 0, NULL, false, NULL, NULL, "
                "CURRENT_TIMESTAMP)"
            )
        )
    out = _race(url, _open_and_read, 4)
    # Every process that opened the old catalog at the same moment reads the row's embedder
    # version under its new name: nothing re-embedded, nothing lost.
    assert out == ["ok"] * 4
    cols = {c["name"] for c in sa.inspect(engine).get_columns("sf_documents")}
    assert "embedder_version" in cols and "model_version" not in cols
    # ... and the chunk count column was added once, NULL (unknown) in the old row
    assert "chunks" in cols
    cat = Catalog(url)
    assert cat.rows("notes")[0]["chunks"] is None
    row = {"source": "notes", "doc_id": "a", "point_id": "p", "tenant": "bank", "status": "indexed"}
    with cat.transaction() as conn:
        cat.record([{**row, "chunks": 3}], conn)
    assert cat.rows("notes")[0]["chunks"] == 3
    cat.engine.dispose()
    engine.dispose()


def test_a_catalog_from_before_the_rename_is_upgraded_in_place_sqlite(tmp_path):
    _legacy_upgrade(f"sqlite:///{tmp_path}/catalog.db")


def test_a_catalog_from_before_the_rename_is_upgraded_in_place_postgres():
    with _new_postgres_database() as url:
        _legacy_upgrade(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_many_documents_are_looked_up_in_one_statement(tmp_path, backend):
    from datetime import UTC, datetime

    from semflow.catalog import INDEXED
    from semflow.documents import Document
    from semflow.sync.rows import row

    url = f"sqlite:///{tmp_path}/catalog.db" if backend == "sqlite" else PG_URL
    cat, source = Catalog(url), f"lookup-{uuid.uuid4().hex[:8]}"
    when = datetime(2026, 1, 2, 3, tzinfo=UTC)
    names = [str(i) for i in range(1990)] + ["o'brien", 'say "hi"', "ünï", "a,b", "[1]", " "]
    docs = [Document(source, i, f"text {i}", updated_at=when) for i in names]
    run_id = cat.start_run(source, (None, None), "full")
    with cat.transaction() as conn:
        cat.record([row(d, INDEXED, "v1", 1, run_id) for d in docs], conn)
    seen: list[str] = []
    sa.event.listen(cat.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    try:
        wanted = [*names, "missing", "1990"]
        fingerprints = cat.fingerprints(source, wanted)
        states = cat.states(source, wanted)
        assert len([s for s in seen if "sf_documents" in s]) == 2  # one each, 2000 ids
        assert set(fingerprints) == set(states) == set(names)
        assert all(fingerprints[d.doc_id] == (INDEXED, d.content_hash, "v1") for d in docs)
        assert all(states[d.doc_id].content_hash == d.content_hash for d in docs)
        assert {s.source_updated_at for s in states.values()} == {when}
        assert cat.fingerprints(source, []) == cat.states(source, []) == {}
    finally:
        with sa.create_engine(url).begin() as conn:
            for table in ("sf_documents", "sf_sync_runs"):
                conn.execute(sa.text(f"DELETE FROM {table} WHERE source = :s"), {"s": source})
