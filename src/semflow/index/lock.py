"""The writer lock of an index store: a `flock` for processes, re-entrant per thread.

Publishing a generation and recording it in the catalog are one critical section under this
lock (see `semflow.sync.apply_sync`), and a re-index swaps generations under it, so two writers
never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from semflow.errors import IndexLockedError


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Hold an exclusive `flock` on `path`, waiting up to `timeout_s`.

    Each call opens its own file description, so two threads of one process exclude each
    other as two processes do. The kernel drops the lock when the holder dies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    raise IndexLockedError(
                        f"{what} is being written by another process ({holder}); waited "
                        f"{timeout_s:.0f} s. Try again when it finishes, or raise "
                        "SEMFLOW_WRITER_LOCK_TIMEOUT_S."
                    ) from None
                time.sleep(0.1)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the flock


@contextlib.contextmanager
def thread_lock(lock: threading.Lock, timeout_s: float, what: str) -> Iterator[None]:
    """Hold `lock` (writers sharing one in-process client), waiting up to `timeout_s`."""
    if not lock.acquire(timeout=timeout_s):
        raise IndexLockedError(
            f"{what} is being written by another thread; waited {timeout_s:.0f} s. Try again "
            "when it finishes, or raise SEMFLOW_WRITER_LOCK_TIMEOUT_S."
        )
    try:
        yield
    finally:
        lock.release()


class Reentrant:
    """Counts how deep each thread holds a store's lock, so a holder can open `writer()`."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextlib.contextmanager
    def hold(
        self, acquire: Callable[[], contextlib.AbstractContextManager[None]]
    ) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        with acquire():
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0
