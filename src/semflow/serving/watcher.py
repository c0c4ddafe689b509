"""Keeps the live index generation open and swaps to a newly published one.

A daemon thread polls the store's LIVE pointer every `poll_s` seconds. A new generation is
opened and warmed (`warm_queries` searches) *before* it replaces the old one, and the old one
is closed only after a grace period, so searches in flight never see a closed index and the
first user searches on a new generation do not pay its cold start.

The watcher serves the newest published generation (up to the live one) that was built with
the server's own embedder (`embedder_version`): after a promotion re-indexed with a new
embedder, a server still running the old model keeps answering from the last generation
its queries fit, and `behind` says so, instead of refusing every search.

A generation that fails to open or warm (files lost in a copy, a full disk) is closed and
tried again after a back-off that doubles from `FIRST_RETRY_S` to `MAX_RETRY_S`, not on
every poll: opening and warming a large generation takes seconds of CPU from the requests
being served. Until it opens, the old generation keeps serving and `last_error` says why
(/health reports it).
"""

from __future__ import annotations

import logging
import threading
import time

from semflow.errors import IndexError_
from semflow.index.base import IndexStore, VectorIndex

log = logging.getLogger(__name__)

# The wait before the next try of a live generation that failed: doubles from the first to
# the longest (the next poll after it, where polls are further apart).
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0


class IndexWatcher:
    def __init__(
        self,
        store: IndexStore,
        embedder_version: str | None = None,
        poll_s: float = 1.0,
        grace_s: float = 10.0,
        warm_queries: int = 0,
    ) -> None:
        self.embedder_version = embedder_version
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.warm_queries = warm_queries
        self.warmed = 0  # warm-up searches run on the generation being served
        self.store = store
        self._current: VectorIndex | None = None
        self._points: int = 0
        self._retiring: list[tuple[float, VectorIndex]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.last_error: str | None = None
        self._retry: dict[int, tuple[int, float]] = {}  # live generation -> (failures, next try)
        self.live: int | None = None  # the store's live generation at the last poll
        self.live_embedder_version: str | None = None
        self._versions: dict[int, str | None] = {}
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="semflow-index-watch", daemon=True)
        self._thread.start()

    @property
    def current(self) -> VectorIndex | None:
        return self._current

    @property
    def points(self) -> int:
        return self._points

    @property
    def behind(self) -> bool:
        """The live generation was built with another embedder than this server's."""
        cur = self._current
        return self.live is not None and (cur is None or cur.generation != self.live)

    def _version_of(self, gen: int) -> str | None:
        # A published generation's embedder never changes: read it once, not every poll
        # (a server that is behind live would otherwise re-read every generation's metadata).
        if gen not in self._versions:
            self._versions[gen] = self.store.embedder_version_of(gen)
        return self._versions[gen]

    def _target(self, live: int) -> int | None:
        """Newest generation <= `live` built with this server's embedder (None: none is)."""
        cur = self._current
        # The live generation is tried even where its metadata is missing (the store lists only
        # generations that have it): reading it then fails and says so, instead of an older
        # generation being served silently.
        gens = {g for g in self.store.generations() if g <= live} | {live}
        for gen in sorted(gens, reverse=True):
            if cur is not None and gen == cur.generation:
                return gen
            version = self._version_of(gen)
            if gen == live:
                self.live_embedder_version = version
            if self.embedder_version is None or version in (None, self.embedder_version):
                return gen
        return None

    def refresh(self) -> bool:
        """Open the generation to serve if it changed; True when a swap happened."""
        try:
            live = self.store.live_generation()
        except Exception as err:  # keep serving the old generation; report in /health
            return self._failed(err)
        cur = self._current
        self.live = live
        if live is None or (cur is not None and cur.generation == live):
            self.live_embedder_version = cur.embedder_version if live is not None and cur else None
            self.last_error = None
            return False
        failed = self._retry.get(live)
        if failed is not None and time.monotonic() < failed[1]:
            return False
        try:
            target = self._target(live)
            if target is None or (cur is not None and cur.generation == target):
                self.last_error = None
                return False
            new = self.store.open_generation(target)
            try:
                points, warmed = new.verified_count(), new.warm(self.warm_queries)
            except IndexError_:
                new.close()
                raise
            except Exception as err:
                new.close()
                raise IndexError_(f"warming index generation {target} failed: {err}") from err
        except Exception as err:
            return self._failed(err, live)
        self._retry.clear()
        with self._lock:
            old, self._current, self._points, self.warmed = self._current, new, points, warmed
            if old is not None:
                self._retiring.append((time.monotonic() + self.grace_s, old))
        self.last_error = None
        log.info(
            "serving index generation %s (%d points, %d warm-up searches; live is %s)",
            new.generation,
            points,
            warmed,
            live,
        )
        return True

    def _failed(self, err: Exception, live: int | None = None) -> bool:
        """Record why the refresh failed; back off the next try of the same live generation."""
        self.last_error = str(err)
        if live is not None:
            failures = self._retry.get(live, (0, 0.0))[0] + 1
            wait = min(FIRST_RETRY_S * 2 ** (failures - 1), MAX_RETRY_S)
            self._retry[live] = (failures, time.monotonic() + wait)
            self.last_error += f" (try {failures} failed; the next in {wait:.0f} s)"
        log.warning("index refresh failed: %s", self.last_error)
        return False

    def _close_retired(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            due = [ix for t, ix in self._retiring if force or t <= now]
            self._retiring = [(t, ix) for t, ix in self._retiring if not (force or t <= now)]
        for ix in due:
            try:
                ix.close()
            except Exception as err:
                log.warning("closing an old index generation failed: %s", err)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()
            self._close_retired()

    def close(self) -> None:
        self._stop.set()
        self._close_retired(force=True)
        with self._lock:
            cur, self._current = self._current, None
        if cur is not None:
            cur.close()
