"""Source interface and the field mapping from records to Documents."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
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
        m = self.mapping
        if m.id == "@row":
            doc_id = str(row)
        else:
            if rec.get(m.id) is None:
                raise SourceError(f"source {self.name!r}: a record has no id field {m.id!r}")
            doc_id = str(rec[m.id])
        text = rec.get(m.text)
        return Document(
            source=self.name,
            doc_id=doc_id,
            text="" if text is None else str(text),
            tenant=str(rec.get(m.tenant) or m.tenant_value) if m.tenant else m.tenant_value,
            type=str(rec.get(m.type) or m.type_value) if m.type else m.type_value,
            title=str(rec.get(m.title) or "") if m.title else "",
            labels=_labels(rec.get(m.labels)) if m.labels else (),
            metadata={k: _plain(rec.get(k)) for k in m.metadata},
            updated_at=to_utc(rec.get(m.updated_at)) if m.updated_at else None,
            deleted=bool(rec.get(m.deleted)) if m.deleted else False,
        )

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
