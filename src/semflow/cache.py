"""Embedding caches: an in-process LRU, and Redis in front of it (shared by servers)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from semflow.config import Settings

log = logging.getLogger(__name__)


def text_key(version: str, text: str) -> str:
    return hashlib.sha256(f"{version}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()


class LRUCache:
    """Thread-safe in-process LRU of embeddings."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        with self._lock:
            for k in keys:
                v = self._d.get(k)
                if v is not None:
                    self._d.move_to_end(k)
                out.append(v)
        return out

    def set_many(self, items: dict[str, np.ndarray]) -> None:
        if self.size <= 0:
            return
        with self._lock:
            for k, v in items.items():
                self._d[k] = v
                self._d.move_to_end(k)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


class RedisCache:
    """Embeddings in Redis as float32 bytes, keyed by (model version, text hash), in front
    of an in-process LRU.

    The cache is an optimisation, so Redis going away never fails a request: reads and
    writes fall back to the LRU, `status()` says "degraded", and Redis is tried again
    every `retry_s` seconds. Entries expire after `ttl_s`.
    """

    PREFIX = "semflow:emb:"

    def __init__(self, url: str, ttl_s: int, local: LRUCache, retry_s: float = 5.0) -> None:
        import redis

        # Short socket timeouts: a hung Redis must cost a request milliseconds, not seconds.
        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.ttl_s = ttl_s
        self.local = local
        self.retry_s = retry_s
        self._down_until = 0.0
        self.last_error: str | None = None

    def _usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, err: Exception) -> None:
        if self.last_error is None:
            log.warning("Redis cache unavailable, using the in-process cache: %s", err)
        self.last_error = type(err).__name__
        self._down_until = time.monotonic() + self.retry_s

    def _recovered(self) -> None:
        if self.last_error is not None:
            log.info("Redis cache is back")
        self.last_error = None

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        out = self.local.get_many(keys)
        missing = [i for i, v in enumerate(out) if v is None]
        if not missing or not self._usable():
            return out
        try:
            raw = self.client.mget([self.PREFIX + keys[i] for i in missing])
        except Exception as err:  # redis.RedisError and socket errors alike
            self._failed(err)
            return out
        self._recovered()
        for i, r in zip(missing, raw, strict=True):
            if r is not None:
                out[i] = np.frombuffer(r, dtype=np.float32)
        return out

    def set_many(self, items: dict[str, np.ndarray]) -> None:
        self.local.set_many(items)
        if not items or not self._usable():
            return
        pipe = self.client.pipeline(transaction=False)
        for k, v in items.items():
            pipe.set(self.PREFIX + k, np.asarray(v, dtype=np.float32).tobytes(), ex=self.ttl_s)
        try:
            pipe.execute()
        except Exception as err:
            self._failed(err)
            return
        self._recovered()

    def status(self) -> dict[str, Any]:
        """Health of the cache; pings Redis when it is due for a retry."""
        if self._usable():
            try:
                self.client.ping()
                self._recovered()
            except Exception as err:
                self._failed(err)
        if self.last_error is None:
            return {"status": "ok", "kind": "redis"}
        return {
            "status": "degraded",
            "kind": "redis",
            "detail": f"Redis unreachable ({self.last_error}); using the in-process cache",
        }


def open_cache(settings: Settings) -> LRUCache | RedisCache:
    """Redis (in front of the in-process LRU) when SEMFLOW_REDIS_URL is set, else the LRU."""
    local = LRUCache(settings.cache_size)
    if settings.redis_url:
        return RedisCache(settings.redis_url, settings.cache_ttl_s, local)
    return local
