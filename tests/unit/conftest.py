"""Fixtures of the index tests that write sparse vectors on both backends."""

from __future__ import annotations

import time

import pytest

from semflow.config import get_settings
from semflow.index.qdrant_edge import EdgeStore
from semflow.index.qdrant_server import ServerStore
from semflow.sparse import LexicalEncoder, lexical_encoder


@pytest.fixture(scope="session")
def lexical() -> LexicalEncoder:
    """This release's BM25 encoder of the base embedder's tokenizer."""
    enc = lexical_encoder(get_settings().base_embedder_dir)
    assert enc is not None
    return enc


@pytest.fixture(params=["edge", "server"])
def stores(request, tmp_path):
    """`make(lexical)`: a store of one shared index (an embedded one, or a collection of an
    in-process Qdrant) that encodes with `lexical`."""
    if request.param == "edge":
        return lambda lexical: EdgeStore(tmp_path / "idx", lock_timeout_s=10, lexical=lexical)
    from qdrant_client import QdrantClient

    client, name = QdrantClient(location=":memory:"), f"c{time.monotonic_ns()}"
    return lambda lexical: ServerStore(":memory:", name, client=client, lexical=lexical)
