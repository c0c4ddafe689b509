"""Server backend: qdrant-client against a Qdrant server (or its in-process local mode).

Each generation is a collection `<name>_g<N>`; the alias `<name>` points to the live one and
is switched atomically by one `update_collection_aliases` call. An incremental sync writes
into the live collection in place (upserts are idempotent), keeping what it replaces so that
a failed write is rolled back (`semflow.index.server_undo`); only a fresh build (full
refresh, new model) creates a new generation.

Writers still take a lock (`IndexStore.lock`), because a sync's writes and its catalog record
must not interleave with another writer's: a thread lock per client in local mode (one process
owns a local collection), a `flock` under `lock_dir` for a server reached by URL.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semflow.documents import PARENT_FIELD
from semflow.errors import IndexError_
from semflow.index.base import (
    INDEXED_FIELDS,
    RRF_K,
    SPARSE_VECTOR,
    TENANT_SPACES,
    Hit,
    IndexStore,
    SearchQuery,
    VectorIndex,
    hybrid_candidates,
)
from semflow.index.lock import file_lock, thread_lock
from semflow.index.server_undo import UndoLog

if TYPE_CHECKING:
    from semflow.sparse import LexicalEncoder

log = logging.getLogger("semflow.index")

_BATCH = 512
# How often a reader may read the tenant map again for a tenant it does not know: a search by
# a tenant without documents must not cost the server a metadata read each time.
TENANT_MAP_RECHECK_S = 1.0
# One lock per (client, collection): stores sharing an in-process client share its writers.
_CLIENT_LOCKS: weakref.WeakKeyDictionary[Any, dict[str, threading.Lock]] = (
    weakref.WeakKeyDictionary()
)
_CLIENT_LOCKS_GUARD = threading.Lock()


def _client_lock(client: Any, name: str) -> threading.Lock:
    with _CLIENT_LOCKS_GUARD:
        return _CLIENT_LOCKS.setdefault(client, {}).setdefault(name, threading.Lock())


class ServerIndex(VectorIndex):
    def __init__(
        self,
        client: Any,
        collection: str,
        generation: int,
        lexical: LexicalEncoder | None = None,
    ) -> None:
        info = client.get_collection(collection)
        meta = dict(info.config.metadata or {})
        if SPARSE_VECTOR not in (info.config.params.sparse_vectors or {}):
            meta.pop("sparse_encoder", None)  # only what the collection really holds counts
        super().__init__(generation, int(info.config.params.vectors.size), meta, lexical)
        self.client = client
        self.collection = collection
        # Collections created before chunking have points without the field: grouped by
        # over-fetching instead (their points are one per document anyway).
        self._group_by = meta.get("group_by")
        self._map_read_at = -TENANT_MAP_RECHECK_S  # the first unknown tenant reads it again
        # set by an in-place writer: what its writes replace, put back if the write fails
        self.undo: UndoLog | None = None

    @staticmethod
    def _filter(terms: list[tuple[str, list[Any]]]) -> Any:
        from qdrant_client import models as m

        must: list[Any] = [
            m.FieldCondition(
                key=key,
                match=m.MatchValue(value=values[0]) if len(values) == 1 else m.MatchAny(any=values),
            )
            for key, values in terms
        ]
        return m.Filter(must=must) if must else None

    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        from qdrant_client import models as m

        vecs = self._vectors(ids, vectors)
        known = len(self.tenant_spaces or ())
        sparse = self._sparse_of(payloads)
        if self.tenant_spaces is not None and len(self.tenant_spaces) > known:
            # stored before any point lands in a new space, so that a reader that meets an
            # unknown tenant can look it up (the writer lock keeps the map one writer's)
            self.client.update_collection(
                self.collection, metadata={TENANT_SPACES: self.tenant_spaces}
            )
        if self.undo is not None:
            self.undo.remember(ids)
        for i in range(0, len(ids), _BATCH):
            batch: Any = vecs[i : i + _BATCH].tolist()
            if sparse is not None:
                # the dense vector keeps the default name "": older collections have only it
                batch = {
                    "": batch,
                    SPARSE_VECTOR: [
                        m.SparseVector(indices=t.indices, values=t.values)
                        for t in sparse[i : i + _BATCH]
                    ],
                }
            self.client.upsert(
                self.collection,
                points=m.Batch(
                    ids=list(ids[i : i + _BATCH]),
                    vectors=batch,
                    # a point without a parent is its own document (one group of its own)
                    payloads=[
                        {**p, PARENT_FIELD: p.get(PARENT_FIELD) or pid}
                        for pid, p in zip(
                            ids[i : i + _BATCH], payloads[i : i + _BATCH], strict=True
                        )
                    ],
                ),
                wait=True,
            )

    def _tenant_space(self, tenant: str) -> int | None:
        """As the base, but a tenant this reader has not seen may have been written since it
        opened (writes go into the live collection): it reads the map again, at most once
        per `TENANT_MAP_RECHECK_S` (so a tenant's first documents may take that long to be
        found by a reader that has just looked for a tenant it did not know)."""
        space = super()._tenant_space(tenant)
        if space is None and time.monotonic() - self._map_read_at >= TENANT_MAP_RECHECK_S:
            self._map_read_at = time.monotonic()
            meta = self.client.get_collection(self.collection).config.metadata or {}
            self.tenant_spaces = dict(meta.get(TENANT_SPACES) or {})
            space = self.tenant_spaces.get(tenant)
        return space

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_client import models as m

        if ids:
            if self.undo is not None:
                self.undo.remember(ids, deleting=True)
            self.client.delete(
                self.collection, points_selector=m.PointIdsList(points=list(ids)), wait=True
            )

    def _query(self, query: SearchQuery) -> dict[str, Any]:
        """The arguments of one Qdrant query API call for `query`'s mode (both the plain
        and the grouped call take them)."""
        from qdrant_client import models as m

        common = {"query_filter": query.filter, "limit": query.top_k, "with_payload": True}
        if query.mode == "dense":
            return {**common, "query": query.vector, "score_threshold": query.score_threshold}
        assert query.sparse is not None
        lexical = m.SparseVector(indices=query.sparse.indices, values=query.sparse.values)
        if query.mode == "sparse":
            return {**common, "query": lexical, "using": SPARSE_VECTOR}
        n = hybrid_candidates(query.top_k)
        prefetch = [
            m.Prefetch(query=query.vector, filter=query.filter, limit=n),
            m.Prefetch(query=lexical, using=SPARSE_VECTOR, filter=query.filter, limit=n),
        ]
        return {**common, "prefetch": prefetch, "query": m.RrfQuery(rrf=m.Rrf(k=RRF_K))}

    def _search(self, query: SearchQuery) -> list[Hit]:
        return self._hits(self.client.query_points(self.collection, **self._query(query)).points)

    def _search_documents(self, query: SearchQuery) -> list[Hit]:
        if not self._group_by:
            return super()._search_documents(query)
        groups = self.client.query_points_groups(
            self.collection, group_by=self._group_by, group_size=1, **self._query(query)
        ).groups
        return self._hits(g.hits[0] for g in groups)

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]:
        recs = self.client.retrieve(
            self.collection, ids=list(ids), with_payload=True, with_vectors=with_vectors
        )
        return self._records(recs, with_vectors)

    def _count(self, flt: Any) -> int:
        return int(self.client.count(self.collection, count_filter=flt, exact=True).count)

    def _scroll(
        self, flt: Any, fields: list[str] | bool, offset: Any, with_vectors: bool = False
    ) -> tuple[list[Any], Any]:
        return self.client.scroll(
            self.collection,
            scroll_filter=flt,
            limit=1000,
            offset=offset,
            with_payload=fields,
            with_vectors=with_vectors,
        )

    def close(self) -> None:
        """The client is owned by the store."""


class ServerStore(IndexStore):
    """Generations as collections behind one alias."""

    def __init__(
        self,
        url: str,
        name: str,
        api_key: str | None = None,
        client: Any = None,
        lock_dir: Path | str | None = None,
        lock_timeout_s: float = 120.0,
        lexical: LexicalEncoder | None = None,
    ) -> None:
        """`lexical`: the encoder of the sparse vectors a fresh generation gets beside the
        dense ones (None: dense only)."""
        from qdrant_client import QdrantClient

        self.name = name
        self.lexical = lexical
        self.lock_timeout_s = lock_timeout_s
        remote = url.startswith(("http://", "https://"))
        self._lock_path = (
            Path(lock_dir) / f"{name}.server-WRITER.lock" if remote and lock_dir else None
        )
        if client is not None:
            self.client = client
        elif url == ":memory:":
            self.client = QdrantClient(location=":memory:")
        elif url.startswith(("http://", "https://")):
            self.client = QdrantClient(url=url, api_key=api_key)
        else:
            self.client = QdrantClient(path=url)
        self._pattern = re.compile(rf"^{re.escape(name)}_g(\d+)$")

    def _coll(self, gen: int) -> str:
        return f"{self.name}_g{gen}"

    def generations(self) -> list[int]:
        gens = []
        for c in self.client.get_collections().collections:
            mt = self._pattern.match(c.name)
            if mt:
                gens.append(int(mt.group(1)))
        return sorted(gens)

    def live_generation(self) -> int | None:
        for a in self.client.get_aliases().aliases:
            if a.alias_name == self.name:
                mt = self._pattern.match(a.collection_name)
                return int(mt.group(1)) if mt else None
        return None

    def open_generation(self, gen: int) -> ServerIndex:
        if gen not in self.generations():
            raise IndexError_(f"generation {gen} of {self.name!r} does not exist")
        return ServerIndex(self.client, self._coll(gen), gen, self.lexical)

    def _where(self) -> str:
        return f"as {self.name!r}"

    def _create(self, gen: int, embedder_version: str, dimension: int) -> None:
        from qdrant_client import models as m

        coll = self._coll(gen)
        meta: dict[str, Any] = {"embedder_version": embedder_version, "generation": gen}
        sparse = None
        if self.lexical is not None:
            meta["sparse_encoder"] = self.lexical.version
            meta[TENANT_SPACES] = {}  # semflow.sparse: a term space per tenant
            sparse = {SPARSE_VECTOR: m.SparseVectorParams(modifier=m.Modifier.IDF)}
        self.client.create_collection(
            coll,
            vectors_config=m.VectorParams(size=dimension, distance=m.Distance.COSINE),
            sparse_vectors_config=sparse,
            metadata={**meta, "group_by": PARENT_FIELD},  # search groups a document's chunks
        )
        with contextlib.suppress(Exception):  # local mode warns that indexes are no-ops
            for f in (*INDEXED_FIELDS, PARENT_FIELD):
                self.client.create_payload_index(coll, f, m.PayloadSchemaType.KEYWORD)

    def _switch(self, gen: int) -> None:
        from qdrant_client import models as m

        ops: list[Any] = []
        if self.live_generation() is not None:
            ops.append(m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=self.name)))
        ops.append(
            m.CreateAliasOperation(
                create_alias=m.CreateAlias(collection_name=self._coll(gen), alias_name=self.name)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def _acquire_lock(self) -> contextlib.AbstractContextManager[None]:
        what = f"the collection {self.name!r}"
        if self._lock_path is not None:
            return file_lock(self._lock_path, self.lock_timeout_s, what)
        return thread_lock(_client_lock(self.client, self.name), self.lock_timeout_s, what)

    def _write(
        self, live: int | None, embedder_version: str, dimension: int, fresh: bool
    ) -> Iterator[ServerIndex]:
        if live is not None and not fresh:
            index = ServerIndex(self.client, self._coll(live), live, self.lexical)
            self._check_embedder(live, index.embedder_version, embedder_version)
            index.undo = UndoLog(self.client, index.collection, _BATCH)
            try:
                yield index
            except BaseException as err:
                _roll_back(index.undo, err)
                raise
            finally:
                index.undo.close()
            return
        gen = self._next_generation(live)
        self._create(gen, embedder_version, dimension)
        try:
            yield ServerIndex(self.client, self._coll(gen), gen, self.lexical)
        except BaseException:
            self.client.delete_collection(self._coll(gen))
            raise
        self._switch(gen)

    def _drop(self, generation: int) -> None:
        self.client.delete_collection(self._coll(generation))


def _roll_back(undo: UndoLog, err: BaseException) -> None:
    """Undo a failed in-place write; when that fails too (the server went away), say so on
    the original error, which is the one raised."""
    try:
        undo.rollback()
    except Exception as undo_err:  # the write's own error is the one raised
        log.error("could not roll back a failed write to %s: %s", undo.collection, undo_err)
        err.add_note(
            f"its writes to {undo.collection} could not be rolled back ({undo_err}); the next "
            "sync writes those documents again"
        )
