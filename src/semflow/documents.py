"""The Document model, its content hash and its deterministic point ids (one per chunk)."""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any


def _hash_json() -> Callable[[Any], str]:
    """json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False), the content hash's
    JSON (other options would change every stored hash), made once: json.dumps builds its
    encoder anew on every call, which cost more than the encoding of a short document."""
    if c_make_encoder is None:  # pragma: no cover - CPython has the C encoder
        return json.JSONEncoder(sort_keys=True, default=str, ensure_ascii=False).encode
    # What JSONEncoder.iterencode builds for those options (no circular check: a document's
    # fields come from JSON-like records and cannot contain themselves).
    encode = c_make_encoder(None, str, encode_basestring, None, ": ", ", ", True, False, True)
    return lambda obj: "".join(encode(obj, 0))


_HASH_JSON = _hash_json()

# Fixed namespace so ids are stable across machines and versions.
NAMESPACE = uuid.UUID("6f1c2a8e-5b0d-4c1e-9a55-3c2f7e9d0b41")
# Chunks after the first get their own namespace: "s/a/1" must never name both chunk 1 of
# document "a" and chunk 0 of a document "a/1".
CHUNK_NAMESPACE = uuid.uuid5(NAMESPACE, "chunk")
# The payload field every chunk of a document shares: the document's own point id (its
# chunk 0's). The server backend groups search hits by it.
PARENT_FIELD = "parent_id"


# A sync asks for each document's id about four times (lookups, upsert, catalog row).
@functools.lru_cache(maxsize=1 << 16)
def point_id(source: str, doc_id: str, chunk_no: int = 0) -> str:
    """Deterministic point id of a document's chunk: uuid5(NAMESPACE, "source/doc_id") for
    chunk 0, the id the document had before chunking (so an older index stays valid), and
    uuid5(CHUNK_NAMESPACE, "source/doc_id/chunk_no") for the others."""
    if chunk_no == 0:
        return str(uuid.uuid5(NAMESPACE, f"{source}/{doc_id}"))
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{source}/{doc_id}/{chunk_no}"))


def to_utc(value: Any) -> datetime | None:
    """Parse a timestamp (datetime, ISO string, epoch seconds) into an aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)):
        dt = datetime.fromtimestamp(value, tz=UTC)
    else:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


@dataclass(frozen=True)
class Document:
    """One text record of an application, as extracted from a source."""

    source: str
    doc_id: str
    text: str
    tenant: str = "default"
    type: str = "document"
    title: str = ""
    labels: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    updated_at: datetime | None = None
    deleted: bool = False

    @property
    def point_id(self) -> str:
        return point_id(self.source, self.doc_id)

    @property
    def content_hash(self) -> str:
        """sha256 over everything that ends up in the index (not updated_at); computed once
        per Document (its fields are frozen), kept beside them (not a field: no eq, no repr)."""
        cached = self.__dict__.get("_content_hash")
        if cached is not None:
            return cached
        body = _HASH_JSON(
            [self.tenant, self.type, self.title, self.text, list(self.labels), self.metadata]
        )
        digest = hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()
        # by hand: functools.cached_property takes a lock on every read before Python 3.12
        self.__dict__["_content_hash"] = digest
        return digest

    def payload(
        self,
        embedder_version: str,
        truncated: bool = False,
        chunk_no: int = 0,
        chunks: int = 1,
        content_hash: str | None = None,
    ) -> dict[str, Any]:
        """The point payload stored in the index (its keys: PAYLOAD_FIELDS); for a chunk of a
        long document, `text` is the chunk's, `chunk_no` / `chunks` place it and
        `content_hash` is the whole document's."""
        return {
            "source": self.source,
            "doc_id": self.doc_id,
            "tenant": self.tenant,
            "type": self.type,
            "title": self.title,
            "text": self.text,
            "labels": list(self.labels),
            "metadata": self.metadata,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "content_hash": content_hash or self.content_hash,
            "embedder_version": embedder_version,
            "truncated": truncated,
            "chunk_no": chunk_no,
            "chunks": chunks,
            PARENT_FIELD: self.point_id,
        }

    def to_json(self) -> dict[str, Any]:
        """Every field in declaration order, JSON-ready; `from_json` reads it back."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        updated_at = self.updated_at.isoformat() if self.updated_at else None
        # Replacing keys keeps their place in the dict.
        return {**out, "labels": list(self.labels), "updated_at": updated_at}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Document:
        return cls(
            source=d["source"],
            doc_id=str(d["doc_id"]),
            text=d.get("text") or "",
            tenant=d.get("tenant") or "default",
            type=d.get("type") or "document",
            title=d.get("title") or "",
            labels=tuple(d.get("labels") or ()),
            metadata=d.get("metadata") or {},
            updated_at=to_utc(d.get("updated_at")),
            deleted=bool(d.get("deleted")),
        )


# The keys of every point's payload (what a re-index copies from the live generation).
PAYLOAD_FIELDS = tuple(Document(source="", doc_id="", text="").payload(embedder_version=""))
