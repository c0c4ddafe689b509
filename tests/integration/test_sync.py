"""Sync against real parts: PostgreSQL (127.0.0.1:5432), MongoDB via mongomock through the
provider's MongoHook (no MongoDB server is installable here), the qdrant-edge engine."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from semflow.app import Services
from semflow.catalog import DELETED, FAILED, INDEXED, Catalog
from semflow.config import get_settings
from semflow.errors import SemflowError, SourceError
from semflow.index import open_store
from semflow.sources import FieldMapping, PostgresSource
from semflow.sync import run_sync

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
WINDOWS = [(T0 + i * HOUR, T0 + (i + 1) * HOUR) for i in range(3)]
MAPPING = dict(
    id="id",
    text="body",
    title="title",
    tenant="tenant",
    labels="label",
    updated_at="updated_at",
    deleted="deleted",
    metadata=["author"],
)


class PgTable:
    """The scenario's rows in a real PostgreSQL table."""

    def __init__(self, engine):
        self.engine = engine
        self.name = f"sf_docs_{uuid.uuid4().hex[:8]}"
        with engine.begin() as c:
            c.execute(
                sa.text(
                    f"CREATE TABLE {self.name} (id int primary key, tenant text, title text, "
                    "body text, label text, author text, updated_at timestamptz, "
                    "deleted boolean not null default false)"
                )
            )

    def source(self):
        return PostgresSource("app", self.engine, table=self.name, mapping=FieldMapping(**MAPPING))

    def upsert(self, id_, body, ts, deleted=False, tenant="t1"):
        with self.engine.begin() as c:
            c.execute(
                sa.text(
                    f"INSERT INTO {self.name} VALUES (:id, :tenant, :title, :body, :label, 'ann', :ts, :d) "
                    "ON CONFLICT (id) DO UPDATE SET body=:body, updated_at=:ts, deleted=:d"
                ),
                dict(
                    id=id_,
                    tenant=tenant,
                    title=f"t{id_}",
                    body=body,
                    label=f"l{id_ % 2}",
                    ts=ts,
                    d=deleted,
                ),
            )

    def hard_delete(self, id_):
        with self.engine.begin() as c:
            c.execute(sa.text(f"DELETE FROM {self.name} WHERE id=:id"), {"id": id_})

    def rows(self):
        with self.engine.connect() as c:
            return {str(r.id): r for r in c.execute(sa.text(f"SELECT * FROM {self.name}"))}

    def drop(self):
        with self.engine.begin() as c:
            c.execute(sa.text(f"DROP TABLE IF EXISTS {self.name}"))


class MongoColl:
    """The same scenario in a MongoDB collection reached through MongoHook (mongomock)."""

    def __init__(self, monkeypatch):
        import mongomock
        from airflow.providers.mongo.hooks import mongo as mongo_hook_mod

        monkeypatch.setattr(mongo_hook_mod, "MongoClient", mongomock.MongoClient)
        monkeypatch.setenv("AIRFLOW_CONN_SEMFLOW_TEST_MONGO", "mongo://127.0.0.1:27017/app")
        self.client = mongo_hook_mod.MongoHook(mongo_conn_id="semflow_test_mongo").get_conn()
        self.coll = self.client["app"]["docs"]

    def source(self):
        from semflow.sources import MongoSource

        return MongoSource("app", self.client, "app", "docs", FieldMapping(**MAPPING))

    def upsert(self, id_, body, ts, deleted=False, tenant="t1"):
        self.coll.replace_one(
            {"id": id_},
            {
                "id": id_,
                "tenant": tenant,
                "title": f"t{id_}",
                "body": body,
                "label": f"l{id_ % 2}",
                "author": "ann",
                "updated_at": ts.replace(tzinfo=None),
                "deleted": deleted,
            },
            upsert=True,
        )

    def hard_delete(self, id_):
        self.coll.delete_one({"id": id_})

    def rows(self):
        class R:
            def __init__(self, d):
                self.__dict__.update(d)

        return {str(d["id"]): R(d) for d in self.coll.find()}

    def drop(self):
        self.coll.drop()


@pytest.fixture(params=["postgres", "mongo"])
def table(request, pg_engine, monkeypatch):
    t = PgTable(pg_engine) if request.param == "postgres" else MongoColl(monkeypatch)
    yield t
    t.drop()


def assert_matches(table, settings):
    """The index and the catalog hold exactly the table's live, valid rows."""
    rows = table.rows()
    live = {k: r.body for k, r in rows.items() if not r.deleted and (r.body or "").strip()}
    bad = {k for k, r in rows.items() if not r.deleted and not (r.body or "").strip()}
    with open_store(settings).open_live() as idx:
        got = dict(idx.iter_payloads("app", fields=("doc_id", "text")))
        by_doc = {p["doc_id"]: p["text"] for p in got.values()}
        assert len(by_doc) == len(got), "duplicate points for one document"
        assert by_doc == live
    cat = Catalog(settings.catalog_database_url)
    assert cat.ids("app", [INDEXED]) == set(live)
    assert cat.ids("app", [FAILED]) == bad
    gone = {r["doc_id"] for r in cat.rows("app")} - set(live) - bad
    assert cat.ids("app", [DELETED]) == gone


def test_three_windows_insert_update_soft_and_hard_delete(table, semflow_home, embedder):
    s = get_settings()

    def sync(window):
        return run_sync(
            table.source(),
            Services.from_settings(None, embedder=embedder),
            window=window,
            reconcile=True,
        )

    for i in range(1, 7):
        table.upsert(
            i,
            "" if i == 5 else f"document number {i} about cards",
            WINDOWS[0][0] + i * 60 * timedelta(seconds=1),
        )
    r1 = sync(WINDOWS[0])
    assert r1.counts["indexed"] == 5 and r1.counts["failed"] == 1
    assert_matches(table, s)
    failed = [r for r in Catalog(s.catalog_database_url).rows("app") if r["status"] == FAILED]
    assert failed[0]["last_error"] == "empty text" and failed[0]["attempts"] == 1

    w2 = WINDOWS[1][0] + timedelta(minutes=5)
    table.upsert(2, "document two, edited", w2)
    table.upsert(3, "document number 3 about cards", w2, deleted=True)
    table.upsert(7, "a new document seven", w2)
    table.hard_delete(4)
    r2 = sync(WINDOWS[1])
    assert r2.counts["indexed"] == 2 and r2.counts["deleted"] == 2
    assert_matches(table, s)

    w3 = WINDOWS[2][0] + timedelta(minutes=5)
    table.upsert(5, "document five now has text", w3)  # the dead letter is fixed at source
    table.upsert(1, "document one, edited twice", w3)
    table.hard_delete(6)
    table.upsert(8, "document eight", w3, tenant="t2")
    r3 = sync(WINDOWS[2])
    assert r3.counts["indexed"] == 3
    assert_matches(table, s)

    # The same window again changes nothing and writes no new generation.
    gen = open_store(s).live_generation()
    again = sync(WINDOWS[2])
    assert again.counts["indexed"] == 0 and again.counts["deleted"] == 0
    assert_matches(table, s)
    assert open_store(s).live_generation() in (gen, gen + 1)


def test_source_down_fails_clearly_and_marks_nothing(semflow_home, embedder):
    src = PostgresSource(
        "down",
        "postgresql+psycopg2://postgres@127.0.0.1:1/test",
        table="documents",
        mapping=FieldMapping(**MAPPING),
    )
    with pytest.raises(SourceError, match="cannot read PostgreSQL source 'down'"):
        run_sync(src, Services.from_settings(None, embedder=embedder))
    s = get_settings()
    assert Catalog(s.catalog_database_url).status_counts() == {}
    assert open_store(s).live_generation() is None


def test_bad_documents_never_stop_the_batch(pg_engine, semflow_home, embedder, monkeypatch):
    monkeypatch.setenv("SEMFLOW_MAX_DOCUMENT_CHARS", "50")
    get_settings.cache_clear()
    t = PgTable(pg_engine)
    try:
        t.upsert(1, "fine text", T0)
        t.upsert(2, "   ", T0)
        t.upsert(3, "x" * 500, T0)
        t.upsert(4, "also fine", T0)
        r = run_sync(t.source(), Services.from_settings(None, embedder=embedder))
        assert r.counts["indexed"] == 3 and r.counts["failed"] == 1 and r.counts["truncated"] == 1
        s = get_settings()
        rows = {x["doc_id"]: x for x in Catalog(s.catalog_database_url).rows("app")}
        assert rows["2"]["status"] == FAILED and rows["2"]["last_error"] == "empty text"
        assert rows["3"]["truncated"] is True and rows["3"]["status"] == INDEXED
        with open_store(s).open_live() as idx:
            hit = next(
                p
                for _, p in idx.iter_payloads("app", ("doc_id", "text", "truncated"))
                if p["doc_id"] == "3"
            )
        assert hit["truncated"] is True and len(hit["text"]) == 50
    finally:
        t.drop()


def test_encoding_errors_are_dead_letters(semflow_home, embedder, tmp_path):
    from semflow.documents import Document
    from semflow.sync import check_text

    err, _, _ = check_text(Document("s", "1", "bad \udcff surrogate"), 100)
    assert err and err.startswith("encoding error")
    err, _, _ = check_text(Document("s", "1", "nul\x00byte"), 100)
    assert err and "NUL" in err


def test_sync_into_qdrant_client_backend(semflow_home, embedder, tmp_path):
    """The server backend (qdrant-client, in-process local mode): incremental in place."""
    import json

    from semflow.index.qdrant_server import ServerStore
    from semflow.sources import FileSource

    path = tmp_path / "d.jsonl"

    def write(rows):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write([{"id": i, "text": f"question {i} about transfers", "gone": False} for i in range(6)])
    src = FileSource("f", path, FieldMapping(updated_at=None, deleted="gone"))
    store = ServerStore(":memory:", "srv")
    cat = Catalog(get_settings().catalog_database_url)
    r1 = run_sync(src, Services.from_settings(None, embedder=embedder, catalog=cat, store=store))
    assert (r1.generation, r1.counts["points"]) == (1, 6)
    write(
        [{"id": i, "text": f"question {i} about transfers", "gone": i == 2} for i in range(6)]
        + [{"id": 9, "text": "brand new", "gone": False}]
    )
    r2 = run_sync(
        src,
        Services.from_settings(None, embedder=embedder, catalog=cat, store=store),
        reconcile=True,
    )
    assert r2.generation == 1  # same collection, written in place
    with store.open_live() as idx:
        ids = {p["doc_id"] for _, p in idx.iter_payloads("f")}
        assert ids == {"0", "1", "3", "4", "5", "9"}
        hit = idx.search(embedder.encode(["brand new"])[0], "default", 1)[0]
        assert hit.payload["doc_id"] == "9"
    assert cat.ids("f", [INDEXED]) == ids


def test_a_server_sync_that_fails_mid_apply_leaves_the_collection_as_it_was(
    semflow_home, embedder, tmp_path, monkeypatch
):
    """The server backend writes an incremental sync into the live collection. A fault after
    the first partitions were upserted (the last one's vectors are gone), and one after every
    partition and the tombstone were written (the catalog read that follows fails), are both
    rolled back: the readers' collection holds what it held before, updates, deletes and new
    documents alike; the retried sync then writes it all."""
    import json

    from semflow.index.qdrant_server import ServerStore
    from semflow.sources import FileSource
    from semflow.sync import apply_sync, embed_partitions, plan_sync

    monkeypatch.setenv("SEMFLOW_SYNC_PARTITION_SIZE", "2")
    get_settings.cache_clear()
    path = tmp_path / "d.jsonl"

    def write(rows):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def held(store):
        with store.open_live() as idx:
            pls = idx.iter_payloads("f", ("doc_id", "text"))
            return {p["doc_id"]: p["text"] for _, p in pls}

    write([{"id": i, "text": f"question {i} about transfers", "gone": False} for i in range(6)])
    src = FileSource("f", path, FieldMapping(updated_at=None, deleted="gone"))
    store = ServerStore(":memory:", "srv")
    cat = Catalog(get_settings().catalog_database_url)
    svc = Services.from_settings(None, embedder=embedder, catalog=cat, store=store)
    run_sync(src, svc)
    before = held(store)
    write(
        [{"id": i, "text": f"question {i} about cards", "gone": i == 2} for i in range(4)]
        + [{"id": 9, "text": "brand new", "gone": False}]
    )
    plan = plan_sync(
        src, catalog=cat, store=store, embedder_version=embedder.version, settings=svc.settings
    )
    assert len(plan.partitions) >= 2
    vectors = embed_partitions(plan, plan.partitions, embedder, svc.settings.sync_embed_group)
    gone = Path(vectors[-1])
    kept = gone.read_bytes()
    gone.unlink()
    with pytest.raises(SemflowError, match="has not been embedded"):
        apply_sync(plan, catalog=cat, store=store, dimension=embedder.dimension, vectors=vectors)
    assert held(store) == before
    gone.write_bytes(kept)

    def catalog_gone(*args, **kwargs):
        raise RuntimeError("the catalog went away")

    with monkeypatch.context() as mp:
        mp.setattr("semflow.sync.apply.failed_rows", catalog_gone)
        with pytest.raises(RuntimeError, match="the catalog went away"):
            apply_sync(
                plan, catalog=cat, store=store, dimension=embedder.dimension, vectors=vectors
            )
    assert held(store) == before
    assert cat.ids("f", [INDEXED]) == set(before)
    run_sync(src, svc)
    after = held(store)
    assert after["0"] == "question 0 about cards" and after["9"] == "brand new"
    assert "2" not in after


def test_a_failed_document_fixed_at_source_is_read_again_by_id(table, semflow_home, embedder):
    """A dead letter is re-read by id (`Source.fetch`) on later syncs, even when its fix kept
    its timestamp (so no later window extracts it); ids as the catalog holds them: strings,
    of integer columns too."""
    s = get_settings()
    t = WINDOWS[0][0] + timedelta(minutes=1)
    table.upsert(1, "a fine document about cards", t)
    table.upsert(2, "", t)
    table.upsert(3, "another fine one about transfers", t)
    src = table.source()
    r1 = run_sync(src, Services.from_settings(None, embedder=embedder), window=WINDOWS[0])
    assert r1.counts["indexed"] == 2 and r1.counts["failed"] == 1
    got = {d.doc_id: (d.text, d.labels) for d in src.fetch(["3", "1", "404", "1.0", "01"])}
    assert got == {
        "1": ("a fine document about cards", ("l1",)),
        "3": ("another fine one about transfers", ("l1",)),
    }
    table.upsert(2, "fixed at the source, same timestamp", t)
    r2 = run_sync(src, Services.from_settings(None, embedder=embedder), window=WINDOWS[1])
    assert r2.counts["indexed"] == 1 and r2.counts["failed"] == 0
    assert_matches(table, s)
    rows = {r["doc_id"]: r for r in Catalog(s.catalog_database_url).rows("app")}
    assert rows["2"]["status"] == INDEXED
