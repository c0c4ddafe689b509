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
import pickle
import tempfile
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
    """What one in-place write replaced, and the points it created. The replaced points are
    spilled to an unnamed temporary file a batch at a time, so a large incremental write keeps
    only their ids in memory."""

    def __init__(self, client: Any, collection: str, batch: int) -> None:
        self.client = client
        self.collection = collection
        self.batch = batch
        # point id -> whether it existed before the write touched it
        self._existed: dict[str, bool] = {}
        self._spill = tempfile.TemporaryFile(prefix="semflow-undo-")  # noqa: SIM115 - closed by close()

    def __len__(self) -> int:
        return len(self._existed)

    def remember(self, ids: Sequence[Any], *, deleting: bool = False) -> None:
        """Keep the current state of the points `ids` that this write has not touched yet
        (before an upsert of them, or a delete: a point a delete does not find is not one
        the write created)."""
        keys = (_key(i) for i in ids)
        new = list(dict.fromkeys(k for k in keys if k not in self._existed))
        for start in range(0, len(new), self.batch):
            chunk = new[start : start + self.batch]
            records = self.client.retrieve(
                self.collection, ids=chunk, with_payload=True, with_vectors=True
            )
            found = {_key(r.id): r for r in records}
            for pid in chunk:
                if pid in found or not deleting:
                    self._existed[pid] = pid in found
            if found:
                pickle.dump([_saved(r) for r in found.values()], self._spill)

    def rollback(self) -> None:
        """Delete the points the write created and put back the ones it replaced."""
        from qdrant_client import models as m

        created = [pid for pid, existed in self._existed.items() if not existed]
        for start in range(0, len(created), self.batch):
            self.client.delete(
                self.collection,
                points_selector=m.PointIdsList(points=created[start : start + self.batch]),
                wait=True,
            )
        restored = 0
        self._spill.seek(0)
        while True:
            try:
                saved = pickle.load(self._spill)
            except EOFError:
                break
            self.client.upsert(self.collection, points=[_point(p) for p in saved], wait=True)
            restored += len(saved)
        log.warning(
            "rolled back a failed write to %s: %d points deleted, %d restored",
            self.collection,
            len(created),
            restored,
        )

    def close(self) -> None:
        self._spill.close()


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
