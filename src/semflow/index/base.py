"""One interface for the vector index, versioned in generations.

A `VectorIndex` is one open generation. An `IndexStore` owns the generations of one
collection: which one is live, opening it for reading, and a `writer()` that yields a
writable generation and publishes it atomically when the block succeeds.
"""

from __future__ import annotations

import itertools
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from semflow.documents import PARENT_FIELD
from semflow.errors import FilterError, IndexError_, SearchModeError
from semflow.index.lock import Reentrant
from semflow.sparse import SparseTerms, in_tenant_space, max_tenant_spaces

if TYPE_CHECKING:
    from semflow.sparse import LexicalEncoder

# Payload fields that get a keyword index and may be used in filters.
INDEXED_FIELDS = ("tenant", "type", "source", "doc_id", "labels")
FILTERABLE = ("type", "source", "doc_id", "labels")
MAX_FILTER_VALUES = 1024
MAX_FILTER_CHARS = 1024
_INT64 = (-(2**63), 2**63 - 1)
_META_KEY = re.compile(r"^metadata\.[A-Za-z0-9_\-]{1,64}$")
# The name of the lexical (sparse) vector beside the unnamed dense one in each point.
SPARSE_VECTOR = "lexical"
# The metadata field of a generation that maps each tenant to its sparse term space.
TENANT_SPACES = "sparse_tenant_spaces"
SEARCH_MODES = ("dense", "sparse", "hybrid")
# Reciprocal rank fusion's k (a document's fused score is the sum of 1 / (k + rank) over the
# lists). Measured with benchmarks/quality.py search (nDCG@10, 1000 Banking77 test queries /
# the keyword set): k=60 (Cormack et al.) 0.837 / 0.667, k=10 0.829 / 0.738, k=2 0.808 / 0.836.
# A small k lets the top of either list win, which is what a query naming a rare term needs,
# at little cost to same-intent search. Given explicitly: the backends' defaults differ.
RRF_K = 2


THRESHOLD_DENSE_ONLY = (
    "score_threshold bounds the dense cosine similarity, so only mode 'dense' takes one"
)


# A warm-up search's query is the start of a stored text: as long as a typical query.
WARM_TEXT_CHARS = 200


def hybrid_candidates(top_k: int) -> int:
    """How many hits each of the dense and the sparse search hands to the fusion: a few
    times `top_k`, so that a document ranked well by one list only can still rise."""
    return max(3 * top_k, 30)


# Grouping search hits by document without the engine's group-by (qdrant-edge 0.9's Python
# API has none): fetch OVERFETCH x top_k points, keep each document's best; while that leaves
# fewer than top_k documents and the engine had more points, fetch OVERFETCH times more, at
# most GROUP_ROUNDS times (64 x top_k points: documents of many chunks crowding the top).
# A generation whose metadata says no document has several points (`chunked` false) needs
# none of that: its first fetch asks for top_k points (at 1M points, 40 instead of 10 hits
# with payloads was most of a search's p99).
OVERFETCH = 4
GROUP_ROUNDS = 3


def stored_embedder_version(meta: Mapping[str, Any]) -> str | None:
    """A generation's embedder version from its metadata; generations written before the
    rename carry it as `model_version`."""
    return meta.get("embedder_version", meta.get("model_version"))


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationInfo:
    generation: int
    embedder_version: str | None
    dimension: int
    points: int


@dataclass(frozen=True)
class SearchQuery:
    """One validated search, as `VectorIndex.search` hands it to a backend's `_search`."""

    vector: list[float] | None  # None in sparse mode
    filter: Any  # the backend's `_filter` of the tenant and the user filters
    top_k: int
    score_threshold: float | None  # a bound on the dense cosine similarity
    mode: str = "dense"
    sparse: SparseTerms | None = None  # the query's lexical vector (sparse and hybrid modes)


def normalize_filters(filters: Mapping[str, Any] | None) -> list[tuple[str, list[Any]]]:
    """Validate user filters into (key, allowed values) pairs.

    The tenant is never a user filter: it is always ANDed in by `search` so that no
    filter can widen the query to another tenant.
    """
    out: list[tuple[str, list[Any]]] = []
    for key, value in (filters or {}).items():
        if key == "tenant":
            raise FilterError("'tenant' cannot be used as a filter; pass it as the tenant")
        if key not in FILTERABLE and not _META_KEY.match(key):
            raise FilterError(
                f"unknown filter field {key!r}; allowed: {', '.join(FILTERABLE)}, metadata.<name>"
            )
        out.append((key, _filter_values(key, value)))
    return out


def best_per_document(hits: Iterable[Hit], top_k: int) -> list[Hit]:
    """The first (best) hit of each document, in order, at most `top_k` of them. A point
    without a parent (written before chunking, or not by a sync) is its own document."""
    seen: set[str] = set()
    out: list[Hit] = []
    for h in hits:
        doc = h.payload.get(PARENT_FIELD) or h.id
        if doc not in seen:
            seen.add(doc)
            out.append(h)
            if len(out) == top_k:
                break
    return out


def filter_terms(
    tenant: str | None, source: str | None = None, extra: Sequence[tuple[str, list[Any]]] = ()
) -> list[tuple[str, list[Any]]]:
    """The (key, allowed values) pairs a query must all match: tenant and source first, then
    the normalised user filters; each backend turns them into its own filter objects."""
    terms: list[tuple[str, list[Any]]] = []
    if tenant is not None:
        terms.append(("tenant", [tenant]))
    if source is not None:
        terms.append(("source", [source]))
    terms.extend(extra)
    return terms


def _filter_values(key: str, value: Any) -> list[Any]:
    """One string/int/bool, or a list of strings or of ints: what Qdrant can match."""
    values = value if isinstance(value, list) else [value]
    kinds = {bool if isinstance(v, bool) else type(v) for v in values}
    if not values or not kinds <= {str, int, bool}:
        raise FilterError(f"filter {key!r} needs a string/int/bool or a non-empty list of them")
    if len(values) > 1 and len(kinds) > 1:
        raise FilterError(f"filter {key!r} mixes value types; use only strings or only integers")
    if len(values) > 1 and bool in kinds:
        raise FilterError(f"filter {key!r}: a list of booleans cannot be matched; pass one")
    if len(values) > MAX_FILTER_VALUES:
        raise FilterError(
            f"filter {key!r} has {len(values)} values; the limit is {MAX_FILTER_VALUES}"
        )
    for v in values:
        if type(v) is int and not _INT64[0] <= v <= _INT64[1]:
            raise FilterError(f"filter {key!r}: {v} is outside the 64-bit integer range")
        if isinstance(v, str) and len(v) > MAX_FILTER_CHARS:
            raise FilterError(
                f"filter {key!r}: a value is longer than {MAX_FILTER_CHARS} characters"
            )
    return values


def check_point_count(generation: int, found: int, published: int | None) -> None:
    """Refuse a generation holding another number of points than it was published with: one
    whose files a copy or a restore lost still opens, as a smaller or empty index."""
    if published is not None and found != published:
        raise IndexError_(
            f"index generation {generation} holds {found} points but was published with "
            f"{published}: its files are incomplete or damaged; restore them, or rebuild the "
            "index with `semflow sync --full-refresh`"
        )


class VectorIndex(ABC):
    """One open generation of the index."""

    def __init__(
        self,
        generation: int,
        dimension: int,
        meta: Mapping[str, Any],
        lexical: LexicalEncoder | None = None,
    ) -> None:
        """`meta`: the generation's stored metadata, which names its embedder version and,
        when its points carry sparse vectors, their encoder (`sparse_encoder`); `lexical`:
        the encoder this process makes sparse vectors with (None: dense only)."""
        self.generation = generation
        self.dimension = dimension
        self.embedder_version = stored_embedder_version(meta)
        self.sparse_encoder: str | None = meta.get("sparse_encoder")
        # tenant -> its term space (semflow.sparse); None: one space shared by all tenants
        # (a generation built before). A writer adds the tenants it writes first.
        spaces = meta.get(TENANT_SPACES)
        self.tenant_spaces: dict[str, int] | None = None if spaces is None else dict(spaces)
        # whether some document is several points (chunks); a generation that does not say
        # (written before the flag) counts as chunked
        self.chunked = meta.get("chunked") is not False
        # how many points the writer counted when it published (None: the backend keeps none)
        self.published_points: int | None = meta.get("points")
        self._lexical = lexical

    @property
    def has_sparse(self) -> bool:
        """Whether this generation's points carry sparse vectors (built since hybrid search;
        an older generation answers dense searches only until a full refresh)."""
        return self.sparse_encoder is not None

    def _stored_encoder(self) -> LexicalEncoder | None:
        """The encoder that wrote this generation's sparse vectors, when this process has it
        (its own, or its variant from before stop words were dropped)."""
        return None if self._lexical is None else self._lexical.for_version(self.sparse_encoder)

    @property
    def keeps_stopwords(self) -> bool:
        """Whether its sparse vectors hold stop words (built before they were dropped: they
        answer as before, with slower sparse searches, until the index is rebuilt)."""
        lex = self._stored_encoder()
        return lex is not None and not lex.stopwords

    def outdated_layout(self) -> list[str]:
        """What of this generation's layout this process would write otherwise (empty: none):
        `semflow index rebuild` writes it anew."""
        if self._lexical is None:
            return []
        if not self.has_sparse:
            return ["no sparse vectors"]
        if self._stored_encoder() is None:
            return [f"sparse vectors of another encoder ({self.sparse_encoder})"]
        old = (
            ("one BM25 term space shared by all tenants", self.tenant_spaces is None),
            ("stop words in its sparse vectors", self.keeps_stopwords),
        )
        return [reason for reason, applies in old if applies]

    def search_mode(
        self, requested: str | None, default: str, score_threshold: float | None = None
    ) -> str:
        """The mode a search runs in: the one asked for, else `default`, except that dense
        answers when the search has a `score_threshold` (a bound on the dense similarity)
        or the generation has no sparse vectors (so an index built before hybrid search keeps
        working until it is rebuilt)."""
        if requested is not None:
            return requested
        if score_threshold is not None or not self.has_sparse:
            return "dense"
        return default

    def _encoder(self) -> LexicalEncoder:
        """The encoder of this generation's sparse vectors (this process's, or its variant
        from before stop words were dropped); refused when neither writes them (another
        tokenizer, other BM25 constants)."""
        lex = self._stored_encoder()
        if lex is None:
            have = "none" if self._lexical is None else self._lexical.version
            raise IndexError_(
                f"generation {self.generation}'s sparse vectors were made by "
                f"{self.sparse_encoder}, but this process's encoder is {have}; rebuild the "
                "index (`semflow index rebuild`, from its own vectors, or a full refresh)"
            )
        return lex

    def _sparse_of(self, payloads: Sequence[Mapping[str, Any]]) -> list[SparseTerms] | None:
        """The sparse vectors of points with these payloads (from their `text`, in their
        tenant's term space), or None when this generation holds dense vectors only. A
        tenant new to the generation gets the next term space."""
        if not self.has_sparse:
            return None
        enc = self._encoder()
        docs = enc.documents([str(p.get("text") or "") for p in payloads])
        spaces = self.tenant_spaces
        if spaces is None:
            return docs
        out = []
        for terms, p in zip(docs, payloads, strict=True):
            tenant = str(p.get("tenant", ""))
            if tenant not in spaces:
                # past the last space (140,717 tenants) tenants share spaces again
                spaces[tenant] = len(spaces) % max_tenant_spaces(enc.vocab_size)
            out.append(in_tenant_space(terms, spaces[tenant], enc.vocab_size))
        return out

    def _query_terms(self, text: str, tenant: str) -> SparseTerms:
        """The sparse query of `text`, in `tenant`'s term space: empty when the tenant has no
        point in this generation."""
        enc = self._encoder()
        terms = enc.query(text)
        if self.tenant_spaces is None:
            return terms
        space = self._tenant_space(tenant)
        return (
            SparseTerms([], []) if space is None else in_tenant_space(terms, space, enc.vocab_size)
        )

    def _tenant_space(self, tenant: str) -> int | None:
        """`tenant`'s term space (None: the tenant has written no point here)."""
        assert self.tenant_spaces is not None
        return self.tenant_spaces.get(tenant)

    @abstractmethod
    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None: ...

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> None: ...

    def search(
        self,
        vector: Sequence[float] | None,
        tenant: str,
        top_k: int = 10,
        filters: Mapping[str, Any] | None = None,
        score_threshold: float | None = None,
        *,
        mode: str = "dense",
        text: str | None = None,
    ) -> list[Hit]:
        """The `top_k` best documents of `tenant` that match every filter, one hit per
        document (its best chunk: a long document is one point per chunk): nearest to `vector`
        (mode dense), best BM25 match of `text` (sparse), or both fused by reciprocal rank
        (hybrid). `score_threshold` bounds the cosine similarity, so only dense search takes
        one (a hybrid score is a fused rank, a sparse one a BM25 sum).

        Sparse and hybrid need a generation with sparse vectors (SearchModeError if not).
        """
        if mode not in SEARCH_MODES:
            raise SearchModeError(f"unknown search mode {mode!r}; use one of {SEARCH_MODES}")
        flt = self._filter(filter_terms(tenant, extra=normalize_filters(filters)))
        sparse = None
        if mode != "dense":
            if not self.has_sparse:
                raise SearchModeError(
                    f"index generation {self.generation} has no sparse vectors (it was built "
                    f"before hybrid search), so it cannot answer mode {mode!r}; search with "
                    "mode 'dense', or rebuild the index: `semflow index rebuild` (from its "
                    "own vectors, no model) or a full refresh (`semflow sync --full-refresh`)"
                )
            if text is None:
                raise ValueError(f"mode {mode!r} needs the query text")
            if score_threshold is not None:
                raise SearchModeError(THRESHOLD_DENSE_ONLY)
            sparse = self._query_terms(text, tenant)
        if vector is None and mode != "sparse":
            raise ValueError(f"mode {mode!r} needs the query vector")
        dense = None if vector is None or mode == "sparse" else [float(x) for x in vector]
        return self._search_documents(SearchQuery(dense, flt, top_k, score_threshold, mode, sparse))

    def _search_documents(self, query: SearchQuery) -> list[Hit]:
        """The best chunk of each of the `top_k` best documents, by over-fetching points (see
        OVERFETCH); a backend whose engine groups by itself overrides this."""
        limit = query.top_k * OVERFETCH if self.chunked else query.top_k
        for _ in range(GROUP_ROUNDS):
            hits = self._search(replace(query, top_k=limit))
            best = best_per_document(hits, query.top_k)
            if len(best) == query.top_k or len(hits) < limit:
                break
            limit *= OVERFETCH
        return best

    @abstractmethod
    def _search(self, query: SearchQuery) -> list[Hit]:
        """Run one validated search on the engine: the `top_k` nearest points."""

    @abstractmethod
    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]: ...

    def count(self, source: str | None = None) -> int:
        """How many points there are (of one source)."""
        return self._count(self._filter(filter_terms(None, source)))

    def verified_count(self) -> int:
        """How many points there are, refusing a generation that lost some (see
        `check_point_count`)."""
        found = self.count()
        check_point_count(self.generation, found, self.published_points)
        return found

    @abstractmethod
    def _count(self, flt: Any) -> int:
        """Exact count of the points that match the backend filter `flt`."""

    def iter_payloads(
        self, source: str | None = None, fields: Sequence[str] = ("doc_id",)
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (point id, selected payload fields) for every point (of one source)."""
        flt = self._filter(filter_terms(None, source))
        offset = None
        while True:
            recs, offset = self._scroll(flt, list(fields), offset)
            for r in recs:
                yield str(r.id), dict(r.payload or {})
            if offset is None:
                break

    def iter_points(self) -> Iterator[tuple[list[str], np.ndarray, list[dict[str, Any]]]]:
        """Every point, a page at a time: (ids, dense vectors, whole payloads)."""
        offset = None
        while True:
            recs, offset = self._scroll(None, True, offset, with_vectors=True)
            if recs:
                hits = self._records(recs, with_vectors=True)
                vectors = np.array([h.payload.pop("_vector") for h in hits], dtype=np.float32)
                yield [h.id for h in hits], vectors, [h.payload for h in hits]
            if offset is None:
                break

    @abstractmethod
    def _scroll(
        self, flt: Any, fields: list[str] | bool, offset: Any, with_vectors: bool = False
    ) -> tuple[list[Any], Any]:
        """One page of records that match `flt` (with `fields` of their payload, or all of it
        for True; with their dense vector if `with_vectors`) and the next offset, or None
        after the last page."""

    @staticmethod
    @abstractmethod
    def _filter(terms: list[tuple[str, list[Any]]]) -> Any:
        """The engine's filter that matches all of `terms` (see `filter_terms`); None for none."""

    def _vectors(self, ids: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """The vectors for `ids` as float32, refused when their dimension is not the index's."""
        vecs = np.asarray(vectors, dtype=np.float32)
        if len(ids) and vecs.shape[1] != self.dimension:
            raise IndexError_(
                f"vector dimension {vecs.shape[1]} does not match the index ({self.dimension})"
            )
        return vecs

    @staticmethod
    def _hits(points: Iterable[Any]) -> list[Hit]:
        """Scored points of either engine as hits."""
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    @staticmethod
    def _records(records: Iterable[Any], with_vectors: bool) -> list[Hit]:
        """Retrieved records of either engine as hits; the vector goes under `_vector`."""
        out = []
        for r in records:
            payload = dict(r.payload or {})
            if with_vectors:
                # a point with sparse vectors returns them all by name; "" is the dense one
                vec = r.vector.get("") if isinstance(r.vector, dict) else r.vector
                payload["_vector"] = list(vec)
            out.append(Hit(str(r.id), 1.0, payload))
        return out

    @abstractmethod
    def close(self) -> None: ...

    def warm(self, queries: int = 200) -> int:
        """Search with the vectors of up to `queries` stored points; returns how many ran.

        A generation just opened answers its first few hundred searches several times slower
        (the engine loads graph, vector and payload pages on first touch): at 100k points p99
        is ~5 ms cold and ~1 ms after 200 warm-up searches. A server warms before it swaps in.
        With sparse vectors this process can query, the searches are hybrid, the service's
        default, so the posting lists of the stored texts' terms are read too (the point's text
        is the query); otherwise dense, so a generation whose sparse encoder this process lacks
        is still warmed and served (dense searches).
        """
        if queries <= 0:
            return 0
        # Ids only: retrieve() below returns each point's whole payload, tenant included.
        ids = [pid for pid, _ in itertools.islice(self.iter_payloads(fields=()), queries)]
        hits = self.retrieve(ids, with_vectors=True)
        mode = "hybrid" if self.has_sparse and self._stored_encoder() is not None else "dense"
        for h in hits:
            text = str(h.payload.get("text") or "")[:WARM_TEXT_CHARS]
            self.search(
                h.payload["_vector"], str(h.payload.get("tenant", "")), 10, mode=mode, text=text
            )
        return len(hits)

    def info(self) -> GenerationInfo:
        return GenerationInfo(self.generation, self.embedder_version, self.dimension, self.count())

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IndexStore(ABC):
    """The generations of one collection."""

    def lock(self) -> AbstractContextManager[None]:
        """Hold the writer lock: one writer at a time, re-entrant in the holding thread.

        `writer()` takes it by itself; hold it around `writer()` to keep what must follow the
        publish (a sync's catalog write, a re-index's catch-up) in the same critical section.
        """
        held = self.__dict__.get("_held") or self.__dict__.setdefault("_held", Reentrant())
        return held.hold(self._acquire_lock)

    @abstractmethod
    def _acquire_lock(self) -> AbstractContextManager[None]:
        """Take the lock once (a file lock, a thread lock); raises IndexLockedError on timeout."""

    @abstractmethod
    def live_generation(self) -> int | None: ...

    @abstractmethod
    def generations(self) -> list[int]: ...

    def open_live(self) -> VectorIndex:
        """Open the live generation for reading; raises if there is none."""
        gen = self.live_generation()
        if gen is None:
            raise IndexError_(f"no index has been published {self._where()}; run `semflow sync`")
        return self.open_generation(gen)

    @abstractmethod
    def _where(self) -> str:
        """Where the index lives, for messages: 'at <dir>', 'as <alias>'."""

    @abstractmethod
    def open_generation(self, generation: int) -> VectorIndex:
        """Open one published generation for reading; raises if it does not exist."""

    def embedder_version_of(self, generation: int) -> str | None:
        """The embedder version a generation was built with."""
        with self.open_generation(generation) as idx:
            return idx.embedder_version

    def live_embedder_version(self) -> str | None:
        """Model version of the live generation, or None when nothing is published."""
        if self.live_generation() is None:
            return None
        with self.open_live() as idx:
            return idx.embedder_version

    @contextmanager
    def writer(
        self, embedder_version: str, dimension: int, fresh: bool = False
    ) -> Iterator[VectorIndex]:
        """A writable generation based on the live one (or empty if `fresh`), under `lock()`.

        Published atomically when the block exits without error; discarded otherwise (the
        server backend's incremental write, which lands in the live collection, is rolled
        back: `semflow.index.server_undo`).
        """
        with self.lock():
            yield from self._write(self.live_generation(), embedder_version, dimension, fresh)

    @abstractmethod
    def _write(
        self, live: int | None, embedder_version: str, dimension: int, fresh: bool
    ) -> Iterator[VectorIndex]:
        """`writer` under the lock: yield the writable generation once, then publish it; on an
        exception thrown in at the yield, discard it and re-raise."""

    def drop_generation(self, generation: int) -> None:
        """Delete a generation that is not live."""
        if generation == self.live_generation():
            raise IndexError_(f"generation {generation} is live and cannot be dropped")
        self._drop(generation)

    @staticmethod
    def _check_embedder(generation: int, built_with: str | None, wanted: str) -> None:
        """Refuse to add vectors of `wanted` to a generation built with another embedder."""
        from semflow.embedding import check_embedder
        from semflow.errors import ModelMismatchError

        try:
            check_embedder(wanted, str(built_with), f"live generation {generation} was built with")
        except ModelMismatchError as err:
            raise IndexError_(f"{err}; rebuild with a full refresh") from None

    @abstractmethod
    def _drop(self, generation: int) -> None:
        """Delete a generation's data."""

    def _next_generation(self, live: int | None) -> int:
        """The number a new generation gets: above every existing one and the live one."""
        return max([*self.generations(), live or 0]) + 1

    def prune(self, keep: int) -> list[int]:
        """Drop all but the newest `keep` generations (never the live one)."""
        live = self.live_generation()
        gens = sorted(self.generations())
        doomed = [g for g in gens[: max(0, len(gens) - keep)] if g != live]
        for g in doomed:
            self.drop_generation(g)
        return doomed
