"""A PostgreSQL table or query as a source (SQLAlchemy engine: from a URL or PostgresHook)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from semflow.documents import Document
from semflow.errors import SourceError
from semflow.sources.base import FieldMapping, Source

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_FETCH = 2000


def _quote(name: str) -> str:
    if not _IDENT.match(name):
        raise SourceError(f"invalid SQL identifier {name!r}")
    return f'"{name}"'


class PostgresSource(Source):
    """Rows of `table` (optionally `schema.table`) or of a read-only `query`.

    Inside Airflow pass `PostgresHook(conn_id).get_sqlalchemy_engine()`; from the CLI a URL.
    """

    def __init__(
        self,
        name: str,
        engine: Any,
        table: str | None = None,
        query: str | None = None,
        mapping: FieldMapping | None = None,
    ) -> None:
        super().__init__(name, mapping)
        if (table is None) == (query is None):
            raise SourceError("a PostgreSQL source needs exactly one of table or query")
        if isinstance(engine, str):
            import sqlalchemy as sa

            engine = sa.create_engine(engine, pool_pre_ping=True)
        self.engine = engine
        if table is not None:
            self.relation = ".".join(_quote(p) for p in table.split("."))
        else:
            self.relation = f"({query}) AS src"
        for col in self.mapping.columns():
            _quote(col)

    def _select(
        self, where: str = "", params: dict[str, Any] | None = None, expanding: tuple[str, ...] = ()
    ) -> Iterator[dict]:
        import sqlalchemy as sa

        cols = ", ".join(_quote(c) for c in self.mapping.columns())
        sql = f"SELECT {cols} FROM {self.relation}"
        if where:
            sql += f" WHERE {where}"
        stmt = sa.text(sql + f" ORDER BY {_quote(self.mapping.id)}")
        if expanding:
            stmt = stmt.bindparams(*(sa.bindparam(n, expanding=True) for n in expanding))
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True).execute(stmt, params or {})
                while rows := result.mappings().fetchmany(_FETCH):
                    for row in rows:
                        yield dict(row)
        except sa.exc.SQLAlchemyError as err:
            reason = str(getattr(err, "orig", err)).strip().splitlines()[0]
            raise SourceError(f"cannot read PostgreSQL source {self.name!r}: {reason}") from err

    def extract(self, start: datetime | None, end: datetime | None) -> Iterator[Document]:
        ts = self.mapping.updated_at
        conds, params = [], {}
        if ts and start is not None:
            conds.append(f"{_quote(ts)} >= :start")
            params["start"] = start
        if ts and end is not None:
            conds.append(f"{_quote(ts)} < :end")
            params["end"] = end
        to_document = self.converter()
        for rec in self._select(" AND ".join(conds), params):
            yield to_document(rec)

    def fetch(self, doc_ids: Iterable[str]) -> Iterator[Document]:
        ids = list(doc_ids)
        where = f"CAST({_quote(self.mapping.id)} AS TEXT) IN :ids"
        to_document = self.converter()
        for i in range(0, len(ids), _FETCH):
            for rec in self._select(where, {"ids": ids[i : i + _FETCH]}, expanding=("ids",)):
                yield to_document(rec)

    def live_ids(self) -> Iterator[str]:
        where = ""
        if self.mapping.deleted:
            where = f"NOT COALESCE({_quote(self.mapping.deleted)}, false)"
        for rec in self._select(where):
            yield str(rec[self.mapping.id])
