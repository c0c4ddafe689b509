"""MongoSource.fetch finds documents by the ids the catalog holds (`str(value)`), whatever
BSON type the id field stores (mongomock: no MongoDB server is installable here)."""

from __future__ import annotations

import mongomock
from bson import ObjectId

from semflow.sources import FieldMapping, MongoSource


def test_fetch_matches_ids_of_every_stored_type() -> None:
    oid = ObjectId()
    client = mongomock.MongoClient()
    client["app"]["notes"].insert_many(
        [
            {"_id": oid, "body": "an object id"},
            {"_id": 7, "body": "an integer id"},
            {"_id": "x-1", "body": "a string id"},
            {"_id": "7", "body": "a string that spells seven"},
            {"_id": str(ObjectId()), "body": "a string that spells an object id"},
        ]
    )
    src = MongoSource("notes", client, "app", "notes", FieldMapping(id="_id", text="body"))
    every = {d.doc_id: d.text for d in src.extract(None, None)}
    assert len(every) == 4  # the int 7 and the string "7" read as one doc id

    got = {d.doc_id: d.text for d in src.fetch([str(oid), "x-1", "07", "missing"])}
    assert got == {str(oid): "an object id", "x-1": "a string id"}
    both_sevens = sorted(d.text for d in src.fetch(["7"]))
    assert both_sevens == ["a string that spells seven", "an integer id"]
    assert list(src.fetch([])) == []
