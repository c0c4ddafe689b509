from __future__ import annotations

import numpy as np

from semflow.embedding import Embedder, LRUCache, RedisCache
from tests.helpers import REDIS_URL


def test_model_version_is_name_plus_weight_hash(embedder):
    name, _, digest = embedder.version.partition("@")
    assert name == "all-MiniLM-L6-v2" and len(digest) == 12
    again = Embedder(embedder.model_dir, embedder.name)
    assert again.version == embedder.version


def test_encode_is_normalised_and_semantic(embedder):
    v = embedder.encode(["my card has not arrived", "card still not delivered", "exchange rate"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_lru_cache_reuses_rows_and_evicts():
    cache = LRUCache(2)
    cache.set_many({"a": np.ones(2), "b": np.zeros(2)})
    cache.get_many(["a"])
    cache.set_many({"c": np.ones(2)})
    got = cache.get_many(["a", "b", "c"])
    assert got[0] is not None and got[1] is None and got[2] is not None


def test_redis_cache_round_trip(embedder):
    cache = RedisCache(REDIS_URL, ttl_s=60, local=LRUCache(0))
    cache.client.flushdb()
    e = Embedder(embedder.model_dir, embedder.name, cache=cache)
    e._model = embedder.model  # share the loaded weights
    first = e.encode(["redis cached text"])
    assert cache.client.dbsize() == 1
    second = e.encode(["redis cached text"])
    assert np.allclose(first, second)


def test_for_index_uses_the_installed_embedder_of_the_live_generation(semflow_home, embedder):
    import pytest

    from semflow.config import load_settings
    from semflow.embedding import install_embedder, installed_embedder_dir, model_version

    s = load_settings()
    tuned = model_version(embedder.model_dir, "tuned")  # same weights, another name
    with pytest.raises(ValueError, match="does not hold"):
        install_embedder(s, embedder.model_dir, "tuned@000000000000")
    assert installed_embedder_dir(s, tuned) is None
    dest = install_embedder(s, embedder.model_dir, tuned)
    assert dest.parent == semflow_home / "embedders"
    picked = Embedder.for_index(s, tuned)
    assert picked.version == tuned and picked.model_dir == dest
    # a live version with nothing installed falls back to the configured model
    assert Embedder.for_index(s, "other@123456789abc").version == embedder.version
    # no index at all: the configured model
    assert Embedder.for_index(s).version == embedder.version


def test_redis_going_away_and_coming_back(embedder):
    from tests.helpers import PrivateRedis

    server = PrivateRedis()
    server.start()
    try:
        cache = RedisCache(server.url, ttl_s=60, local=LRUCache(100), retry_s=0.2)
        e = Embedder(embedder.model_dir, embedder.name, cache=cache)
        e._model = embedder.model
        first = e.encode(["kept while redis is up"])
        assert cache.status() == {"status": "ok", "kind": "redis"}
        server.stop()
        # Redis down: answers come from the model and the in-process cache, never an error
        down = e.encode(["kept while redis is up", "new text while redis is down"])
        assert np.allclose(down[0], first[0])
        st = cache.status()
        assert st["status"] == "degraded" and "in-process" in st["detail"]
        assert "127.0.0.1" not in st["detail"]  # no addresses on an open health page
        server.start()  # an empty Redis again, on the same port
        import time

        time.sleep(0.3)  # past retry_s
        assert cache.status() == {"status": "ok", "kind": "redis"}
        e.encode(["after redis came back"])
        assert cache.client.dbsize() == 1  # written to Redis again
    finally:
        server.stop()


def test_batch_embedders_do_not_fill_the_serving_cache(monkeypatch, semflow_home):
    """The sync and the CLI embed every document: they must not write them to Redis."""
    from semflow.config import load_settings

    monkeypatch.setenv("SEMFLOW_REDIS_URL", REDIS_URL)
    s = load_settings()
    assert Embedder.from_settings(s).cache is None
    assert Embedder.for_index(s, "other@123456789abc").cache is None
