"""Sync state: one row per document (status, hash, embedder version, generation, errors) and
one row per sync run. SQLAlchemy: SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

INDEXED, FAILED, DELETED = "indexed", "failed", "deleted"

metadata = sa.MetaData()

documents = sa.Table(
    "sf_documents",
    metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("doc_id", sa.String(512), primary_key=True),
    sa.Column("point_id", sa.String(36), nullable=False),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("content_hash", sa.String(64)),
    sa.Column("embedder_version", sa.String(200)),
    sa.Column("generation", sa.Integer),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("truncated", sa.Boolean, nullable=False, default=False),
    # Points the document has in the index (its chunks); 0 once deleted, NULL when unknown
    # (dead letters, rows written before chunking).
    sa.Column("chunks", sa.Integer),
    sa.Column("source_updated_at", sa.DateTime(timezone=True)),
    sa.Column("run_id", sa.Integer),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_sf_documents_status", "source", "status"),
)

runs = sa.Table(
    "sf_sync_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("window_start", sa.DateTime(timezone=True)),
    sa.Column("window_end", sa.DateTime(timezone=True)),
    sa.Column("mode", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("generation", sa.Integer),
    sa.Column("counts", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)


class Fingerprint(NamedTuple):
    """What a sync plan compares with a document: is it indexed, from which text, by which
    model. A tuple, so the catalog builds 100k of them from driver rows cheaply."""

    status: str
    content_hash: str | None
    embedder_version: str | None


@dataclass(frozen=True)
class DocState:
    doc_id: str
    content_hash: str | None
    embedder_version: str | None
    status: str
    attempts: int
    source_updated_at: datetime | None


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def _audit_now() -> datetime:
    # Audit timestamps only (when a row changed); windows never use the clock.
    return datetime.now(UTC)


class Catalog:
    """The catalog database. Its tables and engine are its own: other modules go through
    these methods (tests/unit/test_catalog_ownership.py checks it)."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        _create_tables(self.engine)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """One transaction for several writes (`record`, `finish_run(conn=...)`): all or none."""
        with self.engine.begin() as conn:
            yield conn

    # -- reads ---------------------------------------------------------------
    def states(self, source: str, doc_ids: Iterable[str]) -> dict[str, DocState]:
        """The stored state of each of these documents that the catalog has a row for."""
        ids = list(doc_ids)
        if not ids:
            return {}
        with self.engine.connect() as conn:
            q = sa.select(
                documents.c.doc_id,
                documents.c.content_hash,
                documents.c.embedder_version,
                documents.c.status,
                documents.c.attempts,
                documents.c.source_updated_at,
            ).where(documents.c.source == source, _id_in(conn, ids))
            return {
                r.doc_id: DocState(
                    r.doc_id,
                    r.content_hash,
                    r.embedder_version,
                    r.status,
                    r.attempts,
                    _utc(r.source_updated_at),
                )
                for r in conn.execute(q).all()
            }

    def fingerprints(
        self, source: str, doc_ids: Iterable[str] | None = None
    ) -> dict[str, Fingerprint]:
        """The Fingerprint of each of these documents (None: of all the source's) that the
        catalog has a row for. A no-change sync
        of a large source looks up every one of its documents, so this is one statement and
        plain tuples."""
        ids = None if doc_ids is None else list(doc_ids)
        if ids == []:
            return {}
        with self.engine.connect() as conn:
            q = sa.select(
                documents.c.doc_id,
                documents.c.status,
                documents.c.content_hash,
                documents.c.embedder_version,
            ).where(documents.c.source == source)
            if ids is not None:
                q = q.where(_id_in(conn, ids))
            return {r[0]: Fingerprint(r[1], r[2], r[3]) for r in _driver_rows(conn, q)}

    def ids(self, source: str, statuses: Iterable[str]) -> set[str]:
        q = sa.select(documents.c.doc_id).where(
            documents.c.source == source, documents.c.status.in_(list(statuses))
        )
        with self.engine.connect() as conn:
            return {r.doc_id for r in conn.execute(q)}

    def retryable(self, source: str, max_attempts: int) -> list[str]:
        """Failed documents still under the attempt limit (dead letters to retry)."""
        q = sa.select(documents.c.doc_id).where(
            documents.c.source == source,
            documents.c.status == FAILED,
            documents.c.attempts < max_attempts,
        )
        with self.engine.connect() as conn:
            return [r.doc_id for r in conn.execute(q)]

    def tenant_of(self, source: str, doc_id: str) -> str | None:
        """The tenant stored for a document, None when the catalog has no row for it."""
        q = sa.select(documents.c.tenant).where(
            documents.c.source == source, documents.c.doc_id == doc_id
        )
        with self.engine.connect() as conn:
            return conn.execute(q).scalar()

    def dead_letter_counts(self, max_attempts: int) -> dict[str, int]:
        """Failed documents still under the attempt limit, counted by source (sorted)."""
        q = (
            sa.select(documents.c.source, sa.func.count())
            .where(documents.c.status == FAILED, documents.c.attempts < max_attempts)
            .group_by(documents.c.source)
            .order_by(documents.c.source)
        )
        with self.engine.connect() as conn:
            return {r[0]: int(r[1]) for r in conn.execute(q)}

    def failed_keys(self, older_than: datetime) -> list[str]:
        """`source/doc_id` of the failed rows not changed since `older_than`, sorted."""
        q = (
            sa.select(documents.c.source, documents.c.doc_id)
            .where(_failed_before(older_than))
            .order_by(documents.c.source, documents.c.doc_id)
        )
        with self.engine.connect() as conn:
            return [f"{r.source}/{r.doc_id}" for r in conn.execute(q)]

    def status_counts(self, source: str | None = None) -> dict[str, int]:
        q = sa.select(documents.c.status, sa.func.count()).group_by(documents.c.status)
        if source is not None:
            q = q.where(documents.c.source == source)
        with self.engine.connect() as conn:
            return {r[0]: int(r[1]) for r in conn.execute(q)}

    def rows(self, source: str) -> list[dict[str, Any]]:
        q = sa.select(documents).where(documents.c.source == source).order_by(documents.c.doc_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def recent_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """The newest sync runs, newest first, with their counts decoded."""
        q = sa.select(runs).order_by(runs.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            out = [dict(r._mapping) for r in conn.execute(q)]
        for r in out:
            r["counts"] = json.loads(r["counts"]) if r["counts"] else {}
        return out

    def last_run_id(self) -> int:
        """The newest run id of any source, 0 before the first run."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(runs.c.id))).scalar() or 0)

    def changed_since(self, source: str, run_id: int | None) -> dict[str, dict[str, Any]]:
        """Rows written by runs newer than `run_id` (none when it is None), by doc id."""
        if run_id is None:
            return {}
        q = sa.select(documents).where(documents.c.source == source, documents.c.run_id > run_id)
        with self.engine.connect() as conn:
            return {r.doc_id: dict(r._mapping) for r in conn.execute(q)}

    # -- writes --------------------------------------------------------------
    def start_run(
        self, source: str, window: tuple[datetime | None, datetime | None], mode: str
    ) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(
                runs.insert().values(
                    source=source,
                    window_start=window[0],
                    window_end=window[1],
                    mode=mode,
                    status="running",
                    started_at=_audit_now(),
                )
            )
            return int(res.inserted_primary_key[0])

    def finish_run(
        self,
        run_id: int,
        status: str,
        counts: dict[str, Any] | None = None,
        generation: int | None = None,
        error: str | None = None,
        conn: Any = None,
    ) -> None:
        stmt = (
            runs.update()
            .where(runs.c.id == run_id)
            .values(
                status=status,
                counts=json.dumps(counts or {}),
                generation=generation,
                error=error,
                finished_at=_audit_now(),
            )
        )
        if conn is not None:
            conn.execute(stmt)
        else:
            with self.engine.begin() as c:
                c.execute(stmt)

    def fail_run(
        self, run_id: int, err: BaseException, counts: dict[str, Any] | None = None
    ) -> None:
        """Finish a run as failed, with the start of its error (a traceback-sized message
        must not bloat the run history)."""
        self.finish_run(run_id, "failed", counts, None, error=str(err)[:_ERROR_CHARS])

    def record(self, rows: list[dict[str, Any]], conn: Any) -> None:
        """Upsert document rows (keys: the table's columns) inside the caller's transaction.

        Newer wins: a row whose `source_updated_at` is older than the stored one is ignored
        (rows without one, and stored rows without one, always apply).
        """
        if not rows:
            return
        now = _audit_now()
        for r in rows:
            r.setdefault("changed_at", now)
        dialect = conn.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - other databases are not supported
            raise NotImplementedError(f"catalog on {dialect} is not supported")
        cols = set().union(*(r.keys() for r in rows))
        params = [{c: r.get(c, _DEFAULTS.get(c)) for c in cols} for r in rows]
        stmt = insert(documents)
        update = {c: stmt.excluded[c] for c in cols if c not in ("source", "doc_id")}
        stored, incoming = documents.c.source_updated_at, stmt.excluded.source_updated_at
        newer = sa.or_(stored.is_(None), incoming.is_(None), incoming >= stored)
        # One statement, many parameter sets: SQLAlchemy batches it ("insertmanyvalues").
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["source", "doc_id"], set_=update, where=newer
            ),
            params,
        )

    def prune_failed(self, older_than: datetime, dry_run: bool = False) -> int:
        """Delete failed rows not changed since `older_than`; returns how many."""
        cond = _failed_before(older_than)
        with self.engine.begin() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(documents).where(cond)).scalar()
            if not dry_run:
                conn.execute(documents.delete().where(cond))
        return int(n or 0)


_DEFAULTS: dict[str, Any] = {"attempts": 0, "truncated": False, "last_error": None}


# Up to this many ids go in an IN list (one bound parameter each, under SQLite's limit of
# 999 in old builds); more travel as one array parameter: one statement for a whole source
# instead of one per 900 ids, and nothing compiled per id.
_IN_LIST_MAX = 900
# How much of a failed run's error the run history keeps.
_ERROR_CHARS = 2000


def _id_in(conn: sa.Connection, ids: list[str]) -> sa.ColumnElement[bool]:
    """`doc_id IN ids` for `conn`'s database."""
    if len(ids) <= _IN_LIST_MAX:
        return documents.c.doc_id.in_(ids)
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        arr = sa.bindparam("doc_ids", ids, type_=ARRAY(sa.String))
        return documents.c.doc_id.in_(sa.select(sa.func.unnest(arr)))
    # SQLite: a JSON array, unpacked by json_each (built in since 3.38; JSON1 before)
    values = sa.func.json_each(sa.bindparam("doc_ids", json.dumps(ids)))
    return documents.c.doc_id.in_(sa.select(sa.column("value")).select_from(values))


def _driver_rows(conn: sa.Connection, q: sa.Select[Any]) -> list[tuple[Any, ...]]:
    """The rows of `q` as the driver's own tuples, fetched from the result's DBAPI cursor:
    SQLAlchemy's Row objects cost more than the query itself for 100k rows. Nothing is
    converted, so `q` must select columns the driver returns as they are (strings, integers;
    not SQLite's dates, which are stored as text)."""
    result = conn.execute(q)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


def _failed_before(older_than: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(documents.c.status == FAILED, documents.c.changed_at < older_than)


def _create_tables(engine: sa.Engine, attempts: int = 3) -> None:
    # Two syncs starting on a new database both find no tables and both CREATE them; the
    # loser fails with "already exists" (SQLite) or a unique violation (PostgreSQL). Its
    # next look finds the tables, so a retry is all that is needed.
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            _rename_legacy_columns(engine)
            _add_new_columns(engine)
            return
        except sa.exc.DBAPIError:
            if attempt == attempts - 1:
                raise


# (old name, new name) of renamed columns: catalogs written before the rename are upgraded
# in place on open, so no document is re-embedded and no status is lost.
_RENAMED_COLUMNS = {documents.name: [("model_version", "embedder_version")]}


def _rename_legacy_columns(engine: sa.Engine) -> None:
    for table, pairs in _RENAMED_COLUMNS.items():
        cols = {c["name"] for c in sa.inspect(engine).get_columns(table)}
        for old, new in pairs:
            if old in cols and new not in cols:
                with engine.begin() as conn:
                    conn.execute(sa.text(f"ALTER TABLE {table} RENAME COLUMN {old} TO {new}"))


# Columns added since the first release: catalogs written before get them on open (NULL in
# their existing rows), in place, like the renames above.
_ADDED_COLUMNS = {documents.name: ["chunks"]}


def _add_new_columns(engine: sa.Engine) -> None:
    for table, names in _ADDED_COLUMNS.items():
        for name in names:
            if name in {c["name"] for c in sa.inspect(engine).get_columns(table)}:
                continue
            ddl = metadata.tables[table].c[name].type.compile(engine.dialect)
            # PostgreSQL serialises concurrent ALTERs and skips a column another opener just
            # added; SQLite has no IF NOT EXISTS here, so its loser fails and looks again.
            guard = "IF NOT EXISTS " if engine.dialect.name == "postgresql" else ""
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {guard}{name} {ddl}"))
            except sa.exc.DBAPIError:
                if name not in {c["name"] for c in sa.inspect(engine).get_columns(table)}:
                    raise


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    # Switching to WAL needs an exclusive lock, and SQLite answers "database is locked" at
    # once instead of waiting out busy_timeout. The mode is stored in the file, so the
    # switch only has to win once, in this process or another one.
    for attempt in range(50):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            if attempt == 49:
                raise
            time.sleep(0.1)
    cur.close()
