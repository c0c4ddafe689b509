"""A MongoDB collection as a source (pymongo client: from a URI or MongoHook.get_conn())."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from semflow.documents import Document
from semflow.errors import SourceError
from semflow.sources.base import FieldMapping, Source

_INT = re.compile(r"^-?[0-9]{1,18}$")  # within BSON's int64


class MongoSource(Source):
    """Documents of `database.collection`; timestamps are stored as BSON dates (UTC)."""

    def __init__(
        self,
        name: str,
        client: Any,
        database: str,
        collection: str,
        mapping: FieldMapping | None = None,
    ) -> None:
        super().__init__(name, mapping or FieldMapping(id="_id"))
        if isinstance(client, str):
            import pymongo

            client = pymongo.MongoClient(client, serverSelectionTimeoutMS=5000, tz_aware=True)
        self.client = client
        self.collection = client[database][collection]

    def _find(self, query: dict[str, Any]) -> Iterator[dict]:
        import pymongo.errors

        projection = {c: 1 for c in self.mapping.columns()}
        try:
            yield from self.collection.find(query, projection).sort(self.mapping.id, 1)
        except pymongo.errors.PyMongoError as err:
            raise SourceError(f"cannot read MongoDB source {self.name!r}: {err}") from err

    @staticmethod
    def _naive(dt: datetime) -> datetime:
        # BSON dates are UTC without tzinfo; comparing with aware values fails in some drivers.
        return dt.replace(tzinfo=None)

    def extract(self, start: datetime | None, end: datetime | None) -> Iterator[Document]:
        ts = self.mapping.updated_at
        rng: dict[str, Any] = {}
        if ts and start is not None:
            rng["$gte"] = self._naive(start)
        if ts and end is not None:
            rng["$lt"] = self._naive(end)
        to_document = self.converter()
        for rec in self._find({ts: rng} if rng else {}):
            yield to_document(rec)

    @staticmethod
    def _id_values(doc_ids: set[str]) -> list[Any]:
        """Every stored value that reads as one of `doc_ids` (a doc id is `str(value)`): the
        string, the integer it spells, the ObjectId it spells (BSON compares by type, so
        the string "7" never matches a stored 7)."""
        from bson import ObjectId

        out: list[Any] = []
        for i in doc_ids:
            out.append(i)
            if _INT.match(i) and str(int(i)) == i:  # "07" is not how 7 reads
                out.append(int(i))
            if ObjectId.is_valid(i):
                out.append(ObjectId(i))
        return out

    def fetch(self, doc_ids: Iterable[str]) -> Iterator[Document]:
        wanted = set(doc_ids)
        key, to_document = self.mapping.id, self.converter()
        for rec in self._find({key: {"$in": self._id_values(wanted)}}):
            if str(rec.get(key)) in wanted:  # "ABC..." spells an ObjectId that reads "abc..."
                yield to_document(rec)

    def live_ids(self) -> Iterator[str]:
        query: dict[str, Any] = {}
        if self.mapping.deleted:
            query = {self.mapping.deleted: {"$ne": True}}
        for rec in self._find(query):
            yield str(rec[self.mapping.id])
