"""Planning a sync against the catalog: a no-change re-sync of a large source looks its
documents up in a fixed number of statements, on both catalog backends, and still finds
exactly the changed, new and deleted ones."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from semflow.catalog import DELETED, INDEXED, Catalog
from semflow.config import load_settings
from semflow.sources import FieldMapping, FileSource
from semflow.sync import plan_sync
from semflow.sync.plan import read_lines
from semflow.sync.rows import row
from tests.helpers import PG_URL

VERSION = "test-embedder@1"


class LiveStore:
    """What plan_sync asks of the index: the live generation's model version."""

    def live_embedder_version(self) -> str:
        return VERSION


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request, tmp_path: Path) -> Iterator[Catalog]:
    if request.param == "sqlite":
        yield Catalog(f"sqlite:///{tmp_path}/catalog.db")
        return
    cat = Catalog(PG_URL)  # the shared test database: its sources are this test's own names
    yield cat
    with sa.create_engine(PG_URL).begin() as conn:
        for table in ("sf_documents", "sf_sync_runs"):
            conn.execute(sa.text(f"DELETE FROM {table} WHERE source LIKE 'plan-%'"))


def _source(tmp_path: Path, name: str, n: int, changed: dict[int, str] | None = None):
    path = tmp_path / f"{name}.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            text = (changed or {}).get(i, f"document {i}")
            fh.write(json.dumps({"id": i, "text": text, "gone": i == 3}) + "\n")
    mapping = FieldMapping(updated_at=None, deleted="gone", tenant_value="bank")
    return FileSource(name, path, mapping)


def _index_all(catalog: Catalog, source: FileSource) -> None:
    """Catalog rows of a finished sync of `source`: every document indexed (3 deleted)."""
    docs = list(source.extract(None, None))
    run_id = catalog.start_run(source.name, (None, None), "full")
    rows = [row(d, DELETED if d.deleted else INDEXED, VERSION, 1, run_id) for d in docs]
    with catalog.transaction() as conn:
        catalog.record(rows, conn)


def _plan_statements(catalog: Catalog, source: FileSource, tmp_path: Path, window=(None, None)):
    """plan_sync's plan and the statements it ran on the catalog."""
    seen: list[str] = []

    def log(conn, cursor, statement, *args) -> None:
        seen.append(statement)

    sa.event.listen(catalog.engine, "before_cursor_execute", log)
    try:
        plan = plan_sync(
            source,
            catalog=catalog,
            store=LiveStore(),  # type: ignore[arg-type]
            embedder_version=VERSION,
            window=window,
            settings=load_settings(home=tmp_path / "home"),
        )
    finally:
        sa.event.remove(catalog.engine, "before_cursor_execute", log)
    return plan, seen


# A whole read of the source, and a window (the file has no timestamps: every record is in
# it), which looks its documents up by id.
WINDOWS = [(None, None), (datetime(2026, 1, 1, tzinfo=UTC), None)]


@pytest.mark.parametrize("window", WINDOWS, ids=["whole", "window"])
def test_unchanged_source_costs_the_same_statements_at_any_size(catalog, tmp_path, window):
    counts = {}
    for n in (20, 2500):  # 2500: more than one IN list of 900 ids
        source = _source(tmp_path, f"plan-{n}-{uuid.uuid4().hex[:6]}", n)
        _index_all(catalog, source)
        plan, seen = _plan_statements(catalog, source, tmp_path, window)
        assert plan.counts["skipped"] == n - 1, plan.counts  # all but the deleted one
        assert plan.counts["to_embed"] == plan.counts["tombstones"] == 0
        counts[n] = len([s for s in seen if "sf_documents" in s])
    assert counts[2500] == counts[20] <= 2


@pytest.mark.parametrize("window", WINDOWS, ids=["whole", "window"])
def test_large_plan_still_finds_changed_new_and_deleted_documents(catalog, tmp_path, window):
    name = f"plan-big-{uuid.uuid4().hex[:6]}"
    _index_all(catalog, _source(tmp_path, name, 2000))
    # 7 and 1500 edited, 2000-2001 new, 3 still deleted (no tombstone: already deleted)
    source = _source(tmp_path, name, 2002, changed={7: "edited", 1500: "edited too"})
    source.path.write_text(
        source.path.read_text().replace('"gone": false}\n', '"gone": true}\n', 1)
    )  # and 0 deleted now
    plan, _ = _plan_statements(catalog, source, tmp_path, window)
    embedded = [r for p in plan.partitions for r in read_lines(Path(p))]
    assert sorted(int(r["doc_id"]) for r in embedded) == [7, 1500, 2000, 2001]
    deletes = read_lines(Path(plan.plan_dir) / "deletes.jsonl")
    assert [d["doc_id"] for d in deletes] == ["0"]
    assert plan.counts["skipped"] == 2000 - 4
