"""Vector index: one interface, two Qdrant backends (qdrant-edge embedded, qdrant-client)."""

from __future__ import annotations

from semflow.config import Settings, get_settings
from semflow.index.base import FilterError, GenerationInfo, Hit, IndexStore, VectorIndex

__all__ = ["FilterError", "GenerationInfo", "Hit", "IndexStore", "VectorIndex", "open_store"]


def open_store(settings: Settings | None = None) -> IndexStore:
    """The store chosen by settings: qdrant-edge under `var/index` or a Qdrant server."""
    s = settings or get_settings()
    from semflow.sparse import lexical_encoder

    # Fresh generations get sparse vectors from the configured embedder's tokenizer (a
    # fine-tuned copy keeps it); see semflow.sparse.
    lexical = lexical_encoder(s.base_embedder_dir)
    # Imported here so that only the chosen backend's client library is loaded.
    if s.index_backend == "server":
        from semflow.index.qdrant_server import ServerStore

        return ServerStore(
            s.qdrant_url or ":memory:",
            s.collection,
            api_key=s.qdrant_api_key,
            lock_dir=s.index_dir,
            lock_timeout_s=s.writer_lock_timeout_s,
            lexical=lexical,
        )
    from semflow.index.qdrant_edge import EdgeStore

    return EdgeStore(
        s.index_dir / s.collection,
        lock_timeout_s=s.writer_lock_timeout_s,
        lexical=lexical,
        segment_points=s.index_segment_points,
    )
