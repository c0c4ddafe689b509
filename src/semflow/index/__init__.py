"""Vector index: one interface, two Qdrant backends (qdrant-edge embedded, qdrant-client)."""

from __future__ import annotations

from semflow.index.base import FilterError, GenerationInfo, Hit, IndexStore, VectorIndex, open_store

__all__ = ["FilterError", "GenerationInfo", "Hit", "IndexStore", "VectorIndex", "open_store"]
