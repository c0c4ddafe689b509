"""Adaptive micro-batching of embed requests.

Concurrent requests are queued; one worker thread takes up to `max_batch_size` texts
(waiting at most `max_latency_ms` for more once the first arrived) and embeds them in one
model call, so 32 clients with one text each cost about one batch of 32.

Callers go away: a request cut off by the server's timeout cancels its future, at any
moment. Nothing a caller does can stop the worker: a cancelled future is simply not
answered, and a batch whose callers all left stops at its next chunk. If the worker thread
ever dies anyway, the next `submit` starts a new one and `alive` tells the health check.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError

import numpy as np

log = logging.getLogger(__name__)
_Job = tuple[list[str], "Future[np.ndarray]"]


class MicroBatcher:
    def __init__(
        self,
        fn: Callable[[list[str]], np.ndarray],
        max_batch_size: int = 64,
        max_latency_ms: int = 10,
    ) -> None:
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_ms / 1000.0
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._start_lock = threading.Lock()
        self._closed = False
        self.batches = 0
        self.restarts = 0
        self._thread = self._spawn()

    def _spawn(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="semflow-batcher", daemon=True)
        thread.start()
        return thread

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _ensure_running(self) -> None:
        if self._thread.is_alive() or self._closed:
            return
        with self._start_lock:
            if not self._thread.is_alive():
                log.error("the embed batcher thread had stopped; starting a new one")
                self.restarts += 1
                self._thread = self._spawn()

    def submit(self, texts: Sequence[str]) -> Future[np.ndarray]:
        self._ensure_running()
        fut: Future[np.ndarray] = Future()
        self._q.put((list(texts), fut))
        return fut

    async def encode(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.wrap_future(self.submit(texts))

    def close(self) -> None:
        self._closed = True
        self._q.put(None)

    def _collect(self, first: _Job) -> list[_Job]:
        """`first` plus whatever arrives within the latency budget."""
        jobs = [first]
        n = len(first[0])
        deadline = time.monotonic() + self.max_latency_s
        while n < self.max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                nxt = self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._q.put(None)
                break
            jobs.append(nxt)
            n += len(nxt[0])
        return jobs

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            try:
                self._process(self._collect(item))
            except Exception:  # never let one batch end the thread
                log.exception("embed batch failed unexpectedly")

    def _process(self, jobs: list[_Job]) -> None:
        # Large batches run in chunks of max_batch_size, so a request that timed out stops
        # costing model time at the next chunk instead of holding the thread to the end.
        texts = [t for j, _ in jobs for t in j]
        parts: list[np.ndarray] = []
        try:
            for i in range(0, len(texts), self.max_batch_size):
                if all(f.cancelled() for _, f in jobs):
                    return
                parts.append(self.fn(texts[i : i + self.max_batch_size]))
        except BaseException as err:  # hand the error to every waiting request
            for _, f in jobs:
                _settle(f, error=err)
            return
        self.batches += 1
        out = np.concatenate(parts) if parts else self.fn([])
        start = 0
        for j, f in jobs:
            _settle(f, out[start : start + len(j)])
            start += len(j)


def _settle(
    fut: Future[np.ndarray], value: np.ndarray | None = None, error: BaseException | None = None
) -> None:
    """Resolve a caller's future unless the caller already gave up (cancelled on timeout)."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)  # type: ignore[arg-type]
    except InvalidStateError:
        pass
