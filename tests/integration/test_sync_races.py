"""Writers that race or arrive late: two syncs of different windows applied at once, an older
window replayed after a newer one, a re-index while a sync publishes. Afterwards the index
and the catalog hold the newest source version of every document: 0 lost, 0 stale, 0
duplicates. Real catalog (SQLite and PostgreSQL), both index backends (qdrant-edge and
qdrant-client's local mode)."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from semflow.app import Services
from semflow.catalog import DELETED, FAILED, INDEXED, Catalog
from semflow.config import get_settings
from semflow.documents import Document
from semflow.index import open_store
from semflow.index.qdrant_server import ServerStore
from semflow.sources import FieldMapping, FileSource
from semflow.sync import apply_sync, embed_partition, plan_sync, run_sync
from semflow.training.reindex import rebuild_generation
from tests.helpers import PG_URL, lose_id_trackers

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, tzinfo=UTC)
HOUR, MINUTE = timedelta(hours=1), timedelta(minutes=1)
W = [(T0 + i * HOUR, T0 + (i + 1) * HOUR) for i in range(3)]
# How long a sync that has published waits before its catalog write, so that a second writer
# can run in that gap when nothing stops it (a writer blocked by the lock just waits it out).
PAUSE_S = 4.0


class ChangeLog:
    """An append-only JSONL log read by the project's FileSource: one line per version."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.write_text("")

    def write(self, doc_id: int, text: str, ts: datetime, gone: bool = False) -> None:
        with self.path.open("a") as fh:
            fh.write(
                json.dumps({"id": doc_id, "text": text, "ts": ts.isoformat(), "gone": gone}) + "\n"
            )

    def source(self) -> FileSource:
        return FileSource("log", self.path, FieldMapping(updated_at="ts", deleted="gone"))

    def newest(self) -> dict[str, Document]:
        out: dict[str, Document] = {}
        for d in self.source().extract(None, None):
            if d.doc_id not in out or d.updated_at >= out[d.doc_id].updated_at:
                out[d.doc_id] = d
        return out


@pytest.fixture
def log(tmp_path) -> ChangeLog:
    return ChangeLog(tmp_path / "log.jsonl")


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request, semflow_home, monkeypatch):
    if request.param == "sqlite":
        url = f"sqlite:///{semflow_home}/catalog.db"
        admin = name = None
    else:
        name = f"sf_races_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        url = PG_URL.rsplit("/", 1)[0] + "/" + name
    monkeypatch.setenv("SEMFLOW_CATALOG_URL", url)
    get_settings.cache_clear()
    yield url
    if admin is not None:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture(params=["edge", "server"])
def store(request, catalog_url):
    if request.param == "edge":
        return open_store(get_settings())
    return ServerStore(":memory:", f"races_{uuid.uuid4().hex[:8]}")


def assert_newest(log: ChangeLog, store, catalog: Catalog) -> None:
    """Index payload hash == catalog hash == hash of the newest source version, per document."""
    newest = log.newest()
    want = {i: d.content_hash for i, d in newest.items() if not d.deleted and d.text.strip()}
    with store.open_live() as idx:
        pts = list(idx.iter_payloads("log", fields=("doc_id", "content_hash")))
    doc_ids = [p["doc_id"] for _, p in pts]
    assert len(doc_ids) == len(set(doc_ids)), "duplicate points"
    index = {p["doc_id"]: p["content_hash"] for _, p in pts}
    rows = {r["doc_id"]: r for r in catalog.rows("log")}
    cat = {i: r["content_hash"] for i, r in rows.items() if r["status"] == INDEXED}
    lost = sorted(set(want) - set(index))
    stale = sorted(i for i in want if i in index and index[i] != want[i])
    extra = sorted(set(index) - set(want))
    assert (lost, stale, extra) == ([], [], []), "index: (lost, stale, not in source)"
    assert cat == want, "catalog disagrees with the newest source versions"
    for i, d in newest.items():
        if d.deleted:
            assert rows[i]["status"] == DELETED, i
        elif not d.text.strip():
            assert rows[i]["status"] == FAILED, i


def _write_first_versions(log: ChangeLog, n: int, topic: str) -> None:
    """Notes 0..n-1 in the first window, a minute apart."""
    for i in range(n):
        log.write(i, f"first text of note {i} about {topic}", W[0][0] + i * MINUTE)


def _sync(log, store, catalog, embedder, window):
    """One whole sync of `window` (plan, embed, apply), as the CLI and the DAG run it."""
    return run_sync(
        log.source(),
        Services.from_settings(None, embedder=embedder, catalog=catalog, store=store),
        window=window,
    )


def _plan(log, store, catalog, embedder, window):
    plan = plan_sync(
        log.source(), catalog=catalog, store=store, embedder_version=embedder.version, window=window
    )
    return plan, [embed_partition(plan, p, embedder) for p in plan.partitions]


def test_two_windows_applied_at_once_keep_the_newest(log, store, catalog_url, embedder):
    catalog = Catalog(catalog_url)
    _write_first_versions(log, 8, "a lost card")
    _sync(log, store, catalog, embedder, W[0])
    for i in range(4):
        log.write(i, f"second text of note {i}: the card was found", W[1][0] + i * MINUTE)
    for i in range(2):  # changes again in the next window
        log.write(i, f"third text of note {i}: a new card is on its way", W[2][0] + i * MINUTE)
    log.write(8, "a new note about exchange rates", W[2][0] + 9 * MINUTE)
    plan_a, vec_a = _plan(log, store, catalog, embedder, W[1])
    plan_b, vec_b = _plan(log, store, catalog, embedder, W[2])

    b_recording, a_done = threading.Event(), threading.Event()

    class PausingCatalog(Catalog):
        """B's catalog: stops just before its rows are written, until A is done or PAUSE_S."""

        def record(self, rows, conn):
            b_recording.set()
            a_done.wait(PAUSE_S)
            super().record(rows, conn)

    errors: list[BaseException] = []

    def apply(plan, vectors, cat, done=None):
        try:
            apply_sync(
                plan, catalog=cat, store=store, dimension=embedder.dimension, vectors=vectors
            )
        except BaseException as err:
            errors.append(err)
        finally:
            if done is not None:
                done.set()

    b = threading.Thread(target=apply, args=(plan_b, vec_b, PausingCatalog(catalog_url)))
    b.start()
    assert b_recording.wait(120), "sync B never reached its catalog write"
    a = threading.Thread(target=apply, args=(plan_a, vec_a, catalog, a_done))
    a.start()
    for t in (a, b):
        t.join(180)
    assert errors == []
    assert_newest(log, store, catalog)


def test_older_window_replayed_after_a_newer_one_never_rolls_back(
    log, store, catalog_url, embedder
):
    catalog = Catalog(catalog_url)

    def sync(window):
        return _sync(log, store, catalog, embedder, window)

    _write_first_versions(log, 6, "a card payment")
    log.write(3, "first text of note 3 about a card payment", W[0][0] + 10 * MINUTE, gone=True)
    log.write(4, "   ", W[0][0] + 11 * MINUTE)  # a dead letter in the older window
    sync(W[0])
    log.write(0, "note 0 edited: the payment went through", W[1][0] + MINUTE)
    log.write(3, "note 3 is back: card payment declined", W[1][0] + 2 * MINUTE)
    log.write(4, "note 4 fixed: a top-up failed", W[1][0] + 3 * MINUTE)
    log.write(5, "first text of note 5 about a card payment", W[1][0] + 4 * MINUTE, gone=True)
    sync(W[1])
    assert_newest(log, store, catalog)
    sync(W[0])  # a backfill of the older window
    assert_newest(log, store, catalog)


class Reembedder:
    """Another model version (same weights); its first batch waits for a whole sync to run."""

    def __init__(self, inner, during_first_batch) -> None:
        self.inner, self.during, self.fired = inner, during_first_batch, False
        self.version = "reindexed@" + inner.version.split("@", 1)[1]
        self.dimension = inner.dimension

    def encode(self, texts):
        if not self.fired:
            self.fired = True
            self.during()
        return self.inner.encode(texts)

    def encode_all(self, texts, desc, chunk=1024):
        """The long-batch entry point the re-index calls: here one `encode`."""
        return self.encode(texts)


def test_reindex_keeps_what_a_sync_published_meanwhile(log, store, catalog_url, embedder):
    catalog = Catalog(catalog_url)
    _write_first_versions(log, 8, "a transfer")
    _sync(log, store, catalog, embedder, W[0])
    log.write(0, "note 0 edited: the transfer arrived", W[1][0] + MINUTE)
    log.write(1, "first text of note 1 about a transfer", W[1][0] + 2 * MINUTE, gone=True)
    log.write(8, "a new note about a refund", W[1][0] + 3 * MINUTE)
    synced: list[object] = []

    def sync_meanwhile():
        t = threading.Thread(
            target=lambda: synced.append(_sync(log, store, catalog, embedder, W[1]))
        )
        t.start()
        t.join(180)

    new = Reembedder(embedder, sync_meanwhile)
    rebuild_generation(store, new)
    assert len(synced) == 1, "the sync did not finish while the re-index embedded"
    assert store.live_embedder_version() == new.version
    with store.open_live() as idx:
        versions = {
            p["embedder_version"] for _, p in idx.iter_payloads(fields=("embedder_version",))
        }
    assert versions == {new.version}
    assert_newest(log, store, catalog)


def _full_refresh_outrun_by_a_sync(log, store, catalog, embedder, full_emb):
    """A full refresh planned and embedded (with `full_emb`), not yet applied, while the hourly
    sync publishes an edit of note 0 and a new note 6. Returns (plan, vectors)."""
    _write_first_versions(log, 6, "an ATM")
    _sync(log, store, catalog, embedder, W[0])
    full = plan_sync(
        log.source(),
        catalog=catalog,
        store=store,
        embedder_version=full_emb.version,
        full_refresh=True,
    )
    full_vectors = [embed_partition(full, p, full_emb) for p in full.partitions]
    log.write(0, "note 0 edited: the ATM kept my card", W[1][0] + MINUTE)
    log.write(6, "a new note about a cash withdrawal", W[1][0] + 2 * MINUTE)
    _sync(log, store, catalog, embedder, W[1])
    return full, full_vectors


@pytest.mark.parametrize("same_model", [True, False], ids=["same-model", "new-model"])
def test_full_refresh_keeps_what_a_sync_published_after_its_plan(
    log, store, catalog_url, embedder, same_model
):
    catalog = Catalog(catalog_url)
    full_emb = embedder if same_model else Reembedder(embedder, lambda: None)
    full, full_vectors = _full_refresh_outrun_by_a_sync(log, store, catalog, embedder, full_emb)
    apply_sync(
        full, catalog=catalog, store=store, dimension=embedder.dimension, vectors=full_vectors
    )
    if not same_model:
        # Vectors of the old model cannot be carried into the new generation: the next run
        # embeds those documents again (they are dead letters until then).
        assert catalog.ids("log", [FAILED]) == {"0", "6"}
        _sync(log, store, catalog, full_emb, W[2])
    assert store.live_embedder_version() == full_emb.version
    assert_newest(log, store, catalog)


def test_a_full_refresh_replaces_a_live_generation_copied_in_part(
    log, semflow_home, catalog_url, embedder, tmp_path
):
    """The remedy the refusal names: an incremental sync cannot build on a generation that
    lost files, a full refresh builds without it, and what a sync published after the
    refresh's plan (only in that generation) is embedded again by the next run."""
    from semflow.errors import IndexError_

    store, catalog = open_store(get_settings()), Catalog(catalog_url)
    full, full_vectors = _full_refresh_outrun_by_a_sync(log, store, catalog, embedder, embedder)
    damaged = store.live_generation()
    lose_id_trackers(store._gen_dir(damaged), tmp_path / "lost")
    log.write(1, "note 1 edited while the index is damaged", W[2][0] + MINUTE)
    with pytest.raises(IndexError_, match=f"index generation {damaged} is incomplete"):
        _sync(log, store, catalog, embedder, W[2])

    apply_sync(
        full, catalog=catalog, store=store, dimension=embedder.dimension, vectors=full_vectors
    )
    assert store.live_generation() > damaged
    assert catalog.ids("log", [FAILED]) == {"0", "6"}  # not carried: embedded next run
    _sync(log, store, catalog, embedder, W[2])
    assert_newest(log, store, catalog)


def test_catalog_record_keeps_the_newer_row(catalog_url):
    catalog = Catalog(catalog_url)

    def row(h: str, ts: datetime) -> dict:
        return {
            "source": "log",
            "doc_id": "1",
            "point_id": "p",
            "tenant": "default",
            "content_hash": h,
            "status": INDEXED,
            "source_updated_at": ts,
        }

    with catalog.engine.begin() as conn:
        catalog.record([row("new", W[1][0])], conn)
    with catalog.engine.begin() as conn:
        catalog.record([row("old", W[0][0])], conn)
    assert catalog.states("log", ["1"])["1"].content_hash == "new"
    with catalog.engine.begin() as conn:
        catalog.record([row("newer", W[2][0])], conn)
    assert catalog.states("log", ["1"])["1"].content_hash == "newer"


def test_a_sync_applied_after_a_reindex_swap_dead_letters_its_documents(
    log, store, catalog_url, embedder
):
    catalog = Catalog(catalog_url)
    _write_first_versions(log, 6, "a loan")
    _sync(log, store, catalog, embedder, W[0])
    log.write(0, "note 0 edited: the loan was approved", W[1][0] + MINUTE)
    log.write(6, "a new note about a mortgage", W[1][0] + 2 * MINUTE)
    log.write(2, "first text of note 2 about a loan", W[1][0] + 3 * MINUTE, gone=True)
    plan, vectors = _plan(log, store, catalog, embedder, W[1])
    # A re-index publishes a generation of another model before the sync applies (an Airflow
    # retry of `apply` would reuse this same plan and these same vectors).
    new = Reembedder(embedder, lambda: None)
    rebuild_generation(store, new)

    result = apply_sync(
        plan, catalog=catalog, store=store, dimension=embedder.dimension, vectors=vectors
    )
    assert result.counts["indexed"] == 0 and result.counts["outdated"] == 2
    rows = {r["doc_id"]: r for r in catalog.rows("log")}
    for i in ("0", "6"):
        assert rows[i]["status"] == FAILED and rows[i]["attempts"] == 0, rows[i]
        assert f"re-indexed with {new.version}" in rows[i]["last_error"]
    assert rows["2"]["status"] == DELETED  # the tombstone still applied
    assert store.live_embedder_version() == new.version
    with store.open_live() as idx:
        payloads = dict(idx.iter_payloads("log", fields=("doc_id", "embedder_version")))
    assert "2" not in {p["doc_id"] for p in payloads.values()}
    assert {p["embedder_version"] for p in payloads.values()} == {new.version}

    # The next run embeds the dead letters with the live generation's model.
    _sync(log, store, catalog, new, W[2])
    assert catalog.ids("log", [FAILED]) == set()
    assert_newest(log, store, catalog)
