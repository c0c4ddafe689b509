"""Undo for the server backend's in-place writes.

An incremental write into a Qdrant server lands in the live collection: there is no copy to
discard when it fails. So `ServerStore.writer` keeps, before each upsert or delete, the points
it is about to replace (the first time the write touches them) and, when the block fails,
puts them back and deletes the points the write created. The collection then holds what it
held before, as on the embedded backend, whose failed write is a generation never published.

What it cannot undo: a process killed mid-write (the next sync re-plans the documents its
catalog does not hold as indexed), and the tenant map's new entries, which stay on purpose: a
reader may already have cached a new tenant's term space, and a space handed out once must
never go to another tenant.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("semflow.index")


def _key(point_id: Any) -> str:
    """One spelling of a point id: the engine returns UUIDs in canonical form."""
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError:
        return str(point_id)


@dataclass(frozen=True)
class _Saved:
    """A point as it was before the write, kept compact (float32, not Python floats)."""

    id: Any
    dense: np.ndarray
    sparse: dict[str, tuple[np.ndarray, np.ndarray]]
    payload: dict[str, Any]


class UndoLog:
    """What one in-place write replaced, and the points it created."""

    def __init__(self, client: Any, collection: str, batch: int) -> None:
        self.client = client
        self.collection = collection
        self.batch = batch
        # point id -> the point before the write, or None when the write created it
        self._before: dict[str, _Saved | None] = {}

    def __len__(self) -> int:
        return len(self._before)

    def remember(self, ids: Sequence[Any], *, deleting: bool = False) -> None:
        """Keep the current state of the points `ids` that this write has not touched yet
        (before an upsert of them, or a delete: a point a delete does not find is not one
        the write created)."""
        new = list(dict.fromkeys(_key(i) for i in ids if _key(i) not in self._before))
        for start in range(0, len(new), self.batch):
            chunk = new[start : start + self.batch]
            records = self.client.retrieve(
                self.collection, ids=chunk, with_payload=True, with_vectors=True
            )
            found = {_key(r.id): r for r in records}
            for pid in chunk:
                rec = found.get(pid)
                if rec is not None:
                    self._before[pid] = _saved(rec)
                elif not deleting:
                    self._before[pid] = None

    def rollback(self) -> None:
        """Delete the points the write created and put back the ones it replaced."""
        from qdrant_client import models as m

        created = [pid for pid, saved in self._before.items() if saved is None]
        for start in range(0, len(created), self.batch):
            self.client.delete(
                self.collection,
                points_selector=m.PointIdsList(points=created[start : start + self.batch]),
                wait=True,
            )
        replaced = [saved for saved in self._before.values() if saved is not None]
        for start in range(0, len(replaced), self.batch):
            points = [_point(saved) for saved in replaced[start : start + self.batch]]
            self.client.upsert(self.collection, points=points, wait=True)
        log.warning(
            "rolled back a failed write to %s: %d points deleted, %d restored",
            self.collection,
            len(created),
            len(replaced),
        )


def _saved(record: Any) -> _Saved:
    vector = record.vector if isinstance(record.vector, dict) else {"": record.vector}
    sparse = {
        name: (np.asarray(v.indices, dtype=np.uint32), np.asarray(v.values, dtype=np.float32))
        for name, v in vector.items()
        if name != ""
    }
    return _Saved(record.id, np.asarray(vector[""], dtype=np.float32), sparse, record.payload)


def _point(saved: _Saved) -> Any:
    from qdrant_client import models as m

    vector: dict[str, Any] = {"": saved.dense.tolist()}
    for name, (indices, values) in saved.sparse.items():
        vector[name] = m.SparseVector(indices=indices.tolist(), values=values.tolist())
    return m.PointStruct(id=saved.id, vector=vector, payload=saved.payload)
