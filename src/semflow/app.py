"""The composition root: the one place that builds semflow's parts from Settings.

Every entry point (the Airflow DAGs, the CLI, the DVC stages, the Bento's engine) takes a
`Services` and asks it for the catalog, the index store, the object storage, the embedding
cache and the embedder, instead of building them by hand. Each part is built on first use and
then shared; tests and benchmarks pass ready-made parts in (`Services(settings, store=...)`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from semflow.config import Settings, get_settings

if TYPE_CHECKING:
    from semflow.catalog import Catalog
    from semflow.embedding import Embedder
    from semflow.index.base import IndexStore
    from semflow.storage import ObjectStorage

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Settings plus the parts built from them; build one with `from_settings`."""

    settings: Settings
    _parts: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **parts: Any) -> Services:
        """Services for `settings` (default: the process's). `parts` (catalog, store, storage,
        cache, embedder) are used as given instead of being built."""
        unknown = set(parts) - {"catalog", "store", "storage", "cache", "embedder"}
        if unknown:
            raise TypeError(f"unknown parts: {', '.join(sorted(unknown))}")
        return cls(settings or get_settings(), {k: v for k, v in parts.items() if v is not None})

    def _part(self, name: str, build: Any) -> Any:
        if name not in self._parts:
            self._parts[name] = build()
        return self._parts[name]

    @property
    def catalog(self) -> Catalog:
        from semflow.catalog import Catalog

        return self._part("catalog", lambda: Catalog(self.settings.catalog_database_url))

    @property
    def store(self) -> IndexStore:
        from semflow.index import open_store

        return self._part("store", lambda: open_store(self.settings))

    @property
    def storage(self) -> ObjectStorage:
        from semflow.storage import open_storage

        return self._part("storage", lambda: open_storage(self.settings))

    @property
    def cache(self) -> Any:
        """The embedding cache: Redis in front of an in-process LRU, or the LRU alone."""
        from semflow.cache import open_cache

        return self._part("cache", lambda: open_cache(self.settings))

    def live_embedder_version(self) -> str | None:
        """The embedder version of the live index generation (None: no index, or unreachable)."""
        try:
            return self.store.live_embedder_version()
        except Exception as err:  # no index reachable: the caller falls back to the base model
            log.warning("could not read the live index's embedder version: %s", err)
            return None

    def embedder(self, version: str | None = None, *, cache: Any = None) -> Embedder:
        """The embedder for index generations built with `version` (default: the live one);
        the configured base model when that one is not installed here. Shared per version."""
        from semflow.embedding import resolve_embedder

        given = self._parts.get("embedder")
        if given is not None:
            return given
        version = version or self.live_embedder_version()
        return self._part(
            f"embedder:{version}",
            lambda: resolve_embedder(self.settings, version, cache=cache),
        )
