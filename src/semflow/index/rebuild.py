"""Rebuild the live generation in this release's layout from its own points: no model, no source.

A full refresh (`semflow sync --full-refresh`) reads every source again and embeds every
document. What an index built by an older release lacks needs neither: a BM25 term space per
tenant, sparse vectors without stop words (or sparse vectors at all), sealed segments. The
dense vectors and the payloads are in the index already, and the sparse vectors are made from
the payload's `text`. `rebuild_live` copies every point into a fresh generation under the
writer lock, as a full refresh writes one, and publishes it only when it holds them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from semflow.errors import IndexError_
from semflow.index.base import IndexStore, VectorIndex


@dataclass(frozen=True)
class RebuildReport:
    """What `rebuild_live` did: the generation it replaced and the one it published."""

    replaced: int
    generation: int
    points: int
    seconds: float
    before: dict[str, Any]
    after: dict[str, Any]


def layout(idx: VectorIndex) -> dict[str, Any]:
    """The parts of a generation's layout a rebuild can change."""
    return {
        "sparse_encoder": idx.sparse_encoder,
        "tenant_term_spaces": idx.tenant_spaces is not None,
        "stop_words_kept": idx.keeps_stopwords,
    }


def rebuild_live(store: IndexStore) -> RebuildReport:
    """Write the live generation's points (their stored dense vectors and payloads) into a
    fresh generation with this process's sparse encoder, a term space per tenant and the
    store's segment size; publish it when it holds every point, else leave the live one."""
    t = time.perf_counter()
    if store.live_generation() is None:
        raise IndexError_(f"there is no live generation {store._where()} to rebuild")
    with store.open_live() as idx:
        version, dimension = idx.embedder_version, idx.dimension
    if version is None:
        raise IndexError_(
            "the live generation does not name its embedder; rebuild it with a full refresh"
        )
    with store.writer(version, dimension, fresh=True) as new, store.open_live() as src:
        # Under the writer lock now: a writer that published while this one waited for the
        # lock may have changed the model, and these vectors must match the new label.
        if src.embedder_version != version or src.dimension != dimension:
            raise IndexError_(
                f"generation {src.generation} was published with embedder "
                f"{src.embedder_version} while the rebuild waited; run it again"
            )
        for ids, vectors, payloads in src.iter_points():
            new.upsert(ids, vectors, payloads)
        points, written = src.count(), new.count()
        if written != points:
            raise IndexError_(
                f"the rebuild wrote {written} of generation {src.generation}'s {points} points; "
                "the live generation is unchanged"
            )
        replaced, before = src.generation, layout(src)
        generation, after = new.generation, layout(new)
    return RebuildReport(
        replaced, generation, points, round(time.perf_counter() - t, 2), before, after
    )
