"""Long documents through a real sync: one point per chunk, search by document, updates and
deletes of every chunk, chunk counts in the catalog; on both index backends."""

from __future__ import annotations

import json
import time

import pytest

from semflow.app import Services
from semflow.catalog import DELETED, INDEXED, Catalog
from semflow.chunking import chunker_for
from semflow.config import get_settings
from semflow.documents import point_id
from semflow.index import open_store
from semflow.sources import FieldMapping, FileSource
from semflow.sparse import lexical_encoder
from semflow.sync import run_sync
from tests.helpers import FACT, FACT_QUERY, long_text, text_of_chunks

pytestmark = pytest.mark.integration

SHORT = [
    "I lost my card yesterday",
    "My transfer has not arrived yet",
    "How do I reset my online banking password",
    "Can I get a refund for this purchase",
    "Why was I charged twice",
]


@pytest.fixture(params=["edge", "server"])
def backend(request, semflow_home):
    # no setting raised: a 20k-character document is indexed whole by default
    if request.param == "edge":
        return open_store(get_settings())
    from semflow.index.qdrant_server import ServerStore

    lexical = lexical_encoder(get_settings().base_embedder_dir)
    return ServerStore(":memory:", f"long{time.monotonic_ns()}", lexical=lexical)


def test_long_document_chunks_search_update_and_delete(backend, embedder, tmp_path):
    s = get_settings()
    chunker = chunker_for(s, embedder.version)
    path = tmp_path / "docs.jsonl"

    def write(docs: dict[str, str], gone: set[str] = frozenset()) -> None:
        path.write_text(
            "".join(
                json.dumps({"id": k, "text": v, "gone": k in gone}) + "\n" for k, v in docs.items()
            )
        )

    cat = Catalog(s.catalog_database_url)
    svc = Services.from_settings(None, embedder=embedder, catalog=cat, store=backend)
    src = FileSource("f", path, FieldMapping(updated_at=None, deleted="gone"))

    def points(doc_id: str) -> dict[int, str]:
        with backend.open_live() as idx:
            return {
                p["chunk_no"]: pid
                for pid, p in idx.iter_payloads("f", ("doc_id", "chunk_no"))
                if p["doc_id"] == doc_id
            }

    long, ten = long_text(20_000), text_of_chunks(chunker, 10)
    n_long = len(chunker.split(long))
    docs = {"long": long, "ten": ten, **{f"s{i}": t for i, t in enumerate(SHORT)}}
    write(docs)
    r1 = run_sync(src, svc)
    assert r1.counts["indexed"] == 7 and r1.counts["chunks"] == n_long + 10 + 5
    assert r1.counts["points"] == n_long + 10 + 5
    # deterministic ids: uuid5 of (source, doc_id, chunk_no); chunk 0 keeps the document's id
    assert points("long") == {k: point_id("f", "long", k) for k in range(n_long)}
    chunks = {r["doc_id"]: r["chunks"] for r in cat.rows("f")}
    assert chunks == {"long": n_long, "ten": 10, **{f"s{i}": 1 for i in range(5)}}

    with backend.open_live() as idx:
        texts = {
            p["chunk_no"]: p["text"]
            for _, p in idx.iter_payloads("f", ("doc_id", "chunk_no", "text"))
            if p["doc_id"] == "long"
        }
        assert [k for k, t in texts.items() if FACT in t] == [n_long - 1]  # only the last chunk
        query = embedder.encode([FACT_QUERY])[0]
        hits = idx.search(query, "default", top_k=10)
        # the lexical and the fused search group chunks by document the same way
        for mode in ("sparse", "hybrid"):
            found = idx.search(query, "default", top_k=10, mode=mode, text=FACT_QUERY)
            assert found[0].payload["doc_id"] == "long", mode
            assert found[0].payload["chunk_no"] == n_long - 1, mode
            assert len({h.payload["doc_id"] for h in found}) == len(found), mode
    # the document once, not once per chunk, with its best chunk (the fact) as the snippet
    assert hits[0].payload["doc_id"] == "long" and FACT in hits[0].payload["text"]
    assert hits[0].payload["chunk_no"] == n_long - 1
    assert sorted(h.payload["doc_id"] for h in hits) == sorted(docs)  # 7 documents, once each

    # an update that shrinks a document from 10 chunks to 2 leaves exactly its 2 points
    docs["ten"] = text_of_chunks(chunker, 2)
    write(docs)
    r2 = run_sync(src, svc)
    assert r2.counts["indexed"] == 1 and r2.counts["points"] == n_long + 2 + 5
    assert points("ten") == {0: point_id("f", "ten", 0), 1: point_id("f", "ten", 1)}
    assert {r["doc_id"]: r["chunks"] for r in cat.rows("f")}["ten"] == 2

    # a deleted document (tombstone) and one gone from the source (reconcile) lose every chunk
    write({k: v for k, v in docs.items() if k != "ten"}, gone={"long"})
    r3 = run_sync(src, svc, reconcile=True)
    assert r3.counts["deleted"] == 2 and r3.counts["points"] == 5
    assert points("long") == {} and points("ten") == {}
    rows = {r["doc_id"]: r for r in cat.rows("f")}
    assert {k: (rows[k]["status"], rows[k]["chunks"]) for k in ("long", "ten")} == {
        "long": (DELETED, 0),
        "ten": (DELETED, 0),
    }
    assert cat.ids("f", [INDEXED]) == {f"s{i}" for i in range(5)}
