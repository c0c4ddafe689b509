"""JSONL / CSV / Parquet files as a source."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from semflow.documents import Document, to_utc
from semflow.errors import SourceError
from semflow.sources.base import FieldMapping, Source

_READERS = {".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}


class FileSource(Source):
    """Reads one file; the window applies when the mapping has an `updated_at` column."""

    def __init__(self, name: str, path: Path | str, mapping: FieldMapping | None = None) -> None:
        super().__init__(name, mapping)
        self.path = Path(path)
        if self.path.suffix.lower() not in _READERS:
            raise SourceError(
                f"unsupported file type {self.path.suffix!r} for {self.path}; "
                f"use one of {', '.join(sorted(_READERS))}"
            )

    def _records(self) -> list[dict[str, Any]]:
        import pandas as pd

        if not self.path.exists():
            raise SourceError(f"source file {self.path} does not exist")
        kind = _READERS[self.path.suffix.lower()]
        try:
            if kind == "json":
                df = pd.read_json(self.path, lines=True, dtype=False)
            elif kind == "csv":
                df = pd.read_csv(self.path, dtype=str, keep_default_na=False)
            else:
                df = pd.read_parquet(self.path)
        except (ValueError, OSError) as err:
            raise SourceError(f"cannot read {self.path}: {err}") from err
        missing = [c for c in self.mapping.columns() if c not in df.columns]
        if self.mapping.updated_at in missing:
            missing.remove(self.mapping.updated_at)  # files may have no timestamps
        if missing:
            raise SourceError(f"{self.path} has no column(s) {', '.join(missing)}")
        df = df.astype(object).where(df.notna(), None)
        return _records(df)

    def _has_ts(self, recs: list[dict[str, Any]]) -> bool:
        col = self.mapping.updated_at
        return bool(col) and bool(recs) and col in recs[0]

    def extract(self, start: datetime | None, end: datetime | None) -> Iterator[Document]:
        recs = self._records()
        has_ts = self._has_ts(recs)
        to_document = self.converter()
        for row, rec in enumerate(recs):
            if has_ts:
                ts = to_utc(rec.get(self.mapping.updated_at))
                if ts is not None and (
                    (start is not None and ts < start) or (end is not None and ts >= end)
                ):
                    continue
            yield to_document(rec, row)

    def fetch(self, doc_ids: Iterable[str]) -> Iterator[Document]:
        wanted = set(doc_ids)
        to_document = self.converter()
        for row, rec in enumerate(self._records()):
            doc = to_document(rec, row)
            if doc.doc_id in wanted:
                yield doc

    def live_ids(self) -> Iterator[str]:
        to_document = self.converter()
        for row, rec in enumerate(self._records()):
            doc = to_document(rec, row)
            if not doc.deleted:
                yield doc.doc_id

    def describe(self) -> str:
        return f"{self.name} ({self.path})"


def _records(df: Any) -> list[dict[str, Any]]:
    """`df.to_dict("records")` of an all-object frame, built column by column: to_dict boxes
    every value on its own (numpy scalars into Python ones), a third of a large file's read.
    A column that holds a numpy scalar (or a repeated column name) still goes through to_dict."""
    import numpy as np

    if not df.columns.is_unique:
        return df.to_dict("records")
    names = df.columns.tolist()
    columns = [df[c].tolist() for c in names]
    if any(issubclass(t, np.generic) for col in columns for t in set(map(type, col))):
        return df.to_dict("records")
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


__all__ = ["Document", "FileSource"]
