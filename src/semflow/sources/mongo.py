"""A MongoDB collection as a source (pymongo client: from a URI or MongoHook.get_conn())."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from semflow.documents import Document
from semflow.errors import SourceError
from semflow.sources.base import FieldMapping, Source


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

    def _id_values(self, doc_ids: list[str]) -> list[Any]:
        if self.mapping.id != "_id":
            return doc_ids
        from bson import ObjectId

        return [ObjectId(i) if ObjectId.is_valid(i) else i for i in doc_ids]

    def fetch(self, doc_ids: Iterable[str]) -> Iterator[Document]:
        ids = self._id_values(list(doc_ids))
        to_document = self.converter()
        for rec in self._find({self.mapping.id: {"$in": ids}}):
            yield to_document(rec)

    def live_ids(self) -> Iterator[str]:
        query: dict[str, Any] = {}
        if self.mapping.deleted:
            query = {self.mapping.deleted: {"$ne": True}}
        for rec in self._find(query):
            yield str(rec[self.mapping.id])
