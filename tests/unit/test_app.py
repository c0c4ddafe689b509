"""The composition root: one place builds every part, each once, from one Settings."""

from __future__ import annotations

import numpy as np
import pytest

from semflow.app import Services
from semflow.config import load_settings


def test_parts_are_built_once_and_shared(semflow_home):
    svc = Services.from_settings(load_settings())
    assert svc.catalog is svc.catalog
    assert svc.store is svc.store
    assert svc.cache is svc.cache
    assert svc.catalog.engine.url.database.endswith("semflow.db")
    assert svc.store.root == semflow_home / "index" / "semflow"


def test_given_parts_are_used_and_unknown_ones_refused(semflow_home):
    marker = object()
    svc = Services.from_settings(load_settings(), store=marker, catalog=None)
    assert svc.store is marker
    assert svc.catalog is not None  # None means "build it"
    with pytest.raises(TypeError, match="unknown parts: stroe"):
        Services.from_settings(load_settings(), stroe=marker)


def test_the_embedder_follows_the_live_generation(semflow_home, embedder):
    from semflow.embedding import embedder_version, install_embedder

    s = load_settings()
    svc = Services.from_settings(s)
    # no index yet: the configured model, and no error
    assert svc.live_embedder_version() is None
    assert svc.embedder().version == embedder.version
    tuned = embedder_version(embedder.model_dir, "tuned")
    install_embedder(s, embedder.model_dir, tuned)
    with svc.store.writer(tuned, 384) as w:
        w.upsert(
            ["00000000-0000-0000-0000-000000000001"],
            np.ones((1, 384), np.float32) / np.sqrt(384),
            [{"tenant": "t", "source": "s", "doc_id": "1"}],
        )
    assert svc.live_embedder_version() == tuned
    assert svc.embedder().version == tuned
    assert svc.embedder(tuned) is svc.embedder(tuned)  # weights loaded once per version
