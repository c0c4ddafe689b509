"""Source interface and the field mapping from records to Documents."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from semflow.documents import Document, to_utc
from semflow.errors import SourceError


class FieldMapping(BaseModel):
    """Which record field becomes which Document field.

    `tenant_value` / `type_value` are constants used when no field is mapped.
    `id` may be "@row" for files without an id column (row number, for append-only files).
    """

    model_config = ConfigDict(extra="forbid")

    id: str = "id"
    text: str = "text"
    title: str | None = None
    tenant: str | None = None
    tenant_value: str = "default"
    type: str | None = None
    type_value: str = "document"
    labels: str | None = None
    updated_at: str | None = "updated_at"
    deleted: str | None = None
    metadata: list[str] = Field(default_factory=list)

    def columns(self) -> list[str]:
        cols = [self.id, self.text, self.title, self.tenant, self.type, self.labels]
        cols += [self.updated_at, self.deleted, *self.metadata]
        return [c for c in dict.fromkeys(cols) if c and c != "@row"]


def _labels(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value if v is not None and v != "")
    return (str(value),)


def _plain(value: Any) -> Any:
    """Make a metadata value JSON-safe (datetimes, ObjectIds, decimals)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, datetime):
        return to_utc(value).isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class Source(ABC):
    """An incremental source of Documents.

    `extract(start, end)` yields records with `start <= updated_at < end` (None = open).
    """

    def __init__(self, name: str, mapping: FieldMapping | None = None) -> None:
        if not name or "/" in name:
            raise SourceError(f"invalid source name {name!r}: non-empty, without '/'")
        self.name = name
        self.mapping = mapping or FieldMapping()

    def to_document(self, rec: Mapping[str, Any], row: int | None = None) -> Document:
        """The Document of one record (`row`: its row number, for `id: "@row"`)."""
        return self.converter()(rec, row)

    def converter(self) -> Callable[[Mapping[str, Any], int | None], Document]:
        """`to_document` with the mapping read once: extracting a large source converts every
        record, and the per-record cost is what a no-change sync of it pays."""
        m = self.mapping
        name, id_col, text_col = self.name, m.id, m.text
        tenant_col, tenant_value = m.tenant, m.tenant_value
        type_col, type_value = m.type, m.type_value
        title_col, labels_col, meta_cols = m.title, m.labels, tuple(m.metadata)
        ts_col, deleted_col = m.updated_at, m.deleted

        def convert(rec: Mapping[str, Any], row: int | None = None) -> Document:
            get = rec.get
            if id_col == "@row":
                doc_id = str(row)
            else:
                value = get(id_col)
                if value is None:
                    raise SourceError(f"source {name!r}: a record has no id field {id_col!r}")
                doc_id = str(value)
            text = get(text_col)
            return Document(
                source=name,
                doc_id=doc_id,
                text="" if text is None else str(text),
                tenant=str(get(tenant_col) or tenant_value) if tenant_col else tenant_value,
                type=str(get(type_col) or type_value) if type_col else type_value,
                title=str(get(title_col) or "") if title_col else "",
                labels=_labels(get(labels_col)) if labels_col else (),
                metadata={k: _plain(get(k)) for k in meta_cols} if meta_cols else {},
                updated_at=to_utc(get(ts_col)) if ts_col else None,
                deleted=bool(get(deleted_col)) if deleted_col else False,
            )

        return convert

    @abstractmethod
    def extract(self, start: datetime | None, end: datetime | None) -> Iterator[Document]:
        """Changed records in the window, as Documents (tombstones have deleted=True)."""

    @abstractmethod
    def fetch(self, doc_ids: Iterable[str]) -> Iterator[Document]:
        """Current state of specific records (for retrying dead letters)."""

    @abstractmethod
    def live_ids(self) -> Iterator[str]:
        """Ids of all records that exist and are not soft-deleted (for reconcile)."""

    def describe(self) -> str:
        return self.name
