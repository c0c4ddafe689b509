"""Embedder: a sentence-transformers model loaded offline, with a stable version and a cache."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semflow.config import Settings, get_settings

# Nothing may reach a model hub: weights come from a local directory only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
log = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def model_version(model_dir: Path, name: str) -> str:
    """`name@<sha256 of the weights, 12 hex>`: changes exactly when the weights change."""
    h = hashlib.sha256()
    found = False
    for wf in _WEIGHT_FILES:
        p = model_dir / wf
        if p.exists():
            found = True
            with p.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    if not found:
        raise FileNotFoundError(f"no model weights ({', '.join(_WEIGHT_FILES)}) in {model_dir}")
    return f"{name}@{h.hexdigest()[:12]}"


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


class Embedder:
    """Loads the model lazily; `encode` returns L2-normalised float32 rows by default."""

    def __init__(
        self,
        model_dir: Path | str,
        name: str = "all-MiniLM-L6-v2",
        device: str = "cpu",
        batch_size: int = 64,
        cache: Any | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"model directory {self.model_dir} does not exist")
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self.cache = cache
        self.version = model_version(self.model_dir, name)
        self._model: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings | None = None, cache: Any | None = None) -> Embedder:
        s = settings or get_settings()
        return cls(s.resolved_model_path, s.model_name, s.device, s.embed_batch_size, cache)

    @classmethod
    def for_index(
        cls, settings: Settings | None = None, live_version: str | None = None, cache: Any = None
    ) -> Embedder:
        """The embedder that built the live generation when it is installed locally (a
        promoted fine-tuned model, see `install_embedder`), else the configured model.

        Without this an hourly sync would embed with the base model and undo the reindex
        that followed a promotion.
        """
        s = settings or get_settings()
        if live_version is None:
            from semflow.index import open_store

            try:
                live_version = open_store(s).live_model_version()
            except Exception as err:  # no index reachable: the configured model it is
                log.warning("could not read the live index's model version: %s", err)
        installed = installed_embedder_dir(s, live_version) if live_version else None
        if installed is None:
            return cls.from_settings(s, cache)
        name = live_version.rsplit("@", 1)[0]
        return cls(installed, name, s.device, s.embed_batch_size, cache)

    @property
    def model(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer

                    self._model = SentenceTransformer(
                        str(self.model_dir), device=self.device, local_files_only=True
                    )
        return self._model

    @property
    def dimension(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        return int(get_dim())

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    def _encode_raw(self, texts: Sequence[str], normalize: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        arr = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(arr, dtype=np.float32)

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        """Embed texts; cached rows (normalised only) are reused."""
        if self.cache is None or not normalize:
            return self._encode_raw(texts, normalize)
        keys = [text_key(self.version, t) for t in texts]
        cached = self.cache.get_many(keys)
        missing = [i for i, v in enumerate(cached) if v is None]
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, v in enumerate(cached):
            if v is not None:
                out[i] = v
        if missing:
            fresh = self._encode_raw([texts[i] for i in missing], normalize)
            out[missing] = fresh
            self.cache.set_many({keys[i]: fresh[j] for j, i in enumerate(missing)})
        return out


def _embedder_home(settings: Settings, version: str) -> Path:
    return settings.home / "embedders" / version.replace("/", "_")


def installed_embedder_dir(settings: Settings, version: str) -> Path | None:
    path = _embedder_home(settings, version)
    return path if (path / "config.json").is_file() or (path / "modules.json").is_file() else None


def install_embedder(settings: Settings, model_dir: Path, version: str) -> Path:
    """Copy a (fine-tuned) embedder to `$SEMFLOW_HOME/embedders/<version>`, atomically."""
    import shutil

    dest = _embedder_home(settings, version)
    if installed_embedder_dir(settings, version) is not None:
        return dest
    if model_version(model_dir, version.rsplit("@", 1)[0]) != version:
        raise ValueError(f"{model_dir} does not hold embedder {version}")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
