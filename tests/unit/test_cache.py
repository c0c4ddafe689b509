"""Embedding caches: the LRU, Redis in front of it, and Redis going away."""

from __future__ import annotations

import numpy as np

from semflow.cache import LRUCache, RedisCache
from semflow.embedding import Embedder
from tests.helpers import REDIS_URL


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
