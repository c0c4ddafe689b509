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
        max_batch_tokens: int | None = None,
        cost: Callable[[str], int] = lambda _: 1,
    ) -> None:
        """`cost(text)`: an estimate of the text's tokens; a model call holds at most
        `max_batch_tokens` of them (and at least one text), so one call stays short."""
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_ms / 1000.0
        self.max_batch_tokens = max_batch_tokens
        self.cost = cost
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

    def _collect(self, pending: list[_Pending]) -> bool:
        """Add queued requests to `pending`. Idle: wait for one, then up to the latency
        budget for more to fill a batch. Busy: take all that are queued, without waiting.
        False once closed."""
        idle = not pending
        if idle:
            first = self._q.get()
            if first is None:
                return False
            pending.append(_Pending(*first))
        deadline = time.monotonic() + (self.max_latency_s if idle else 0.0)
        while not idle or sum(p.remaining for p in pending) < self.max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                item = self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            pending.append(_Pending(*item))
        return True

    def _run(self) -> None:
        pending: list[_Pending] = []
        while True:
            try:
                if not self._collect(pending):
                    return
                self._step(pending)
            except Exception:  # never let one batch end the thread
                log.exception("embed batch failed unexpectedly")

    def _step(self, pending: list[_Pending]) -> None:
        """One model call of at most `max_batch_size` texts and `max_batch_tokens` tokens,
        shortest requests first.

        Large requests run a chunk at a time, so small ones that arrive meanwhile wait for
        one chunk, not for the whole large request, and a request that timed out stops
        costing model time at its next chunk.
        """
        pending[:] = [p for p in pending if not p.future.cancelled()]
        pending.sort(key=lambda p: p.remaining)
        chunk: list[tuple[_Pending, int]] = []
        room = self.max_batch_size
        budget = self.max_batch_tokens
        for p in pending:
            take = 0
            while take < min(room, p.remaining):
                if budget is not None:
                    c = self.cost(p.texts[p.done + take])
                    if budget < c and (chunk or take):
                        break
                    budget -= c
                take += 1
            if take:
                chunk.append((p, take))
            room -= take
            if room <= 0 or (budget is not None and budget <= 0) or take < p.remaining:
                break
        if not chunk:
            return
        texts = [t for p, n in chunk for t in p.texts[p.done : p.done + n]]
        try:
            out = self.fn(texts)
        except BaseException as err:  # hand the error to every request in the chunk
            for p, _ in chunk:
                _settle(p.future, error=err)
            pending[:] = [p for p in pending if all(p is not q for q, _ in chunk)]
            return
        self.batches += 1
        start = 0
        for p, n in chunk:
            p.parts.append(out[start : start + n])
            p.done += n
            start += n
            if p.remaining == 0:
                _settle(p.future, p.parts[0] if len(p.parts) == 1 else np.concatenate(p.parts))
        pending[:] = [p for p in pending if p.remaining > 0]


class _Pending:
    """A request being embedded: its texts, how many are done and their vectors so far."""

    def __init__(self, texts: list[str], future: Future[np.ndarray]) -> None:
        self.texts = texts
        self.future = future
        self.done = 0
        self.parts: list[np.ndarray] = []

    @property
    def remaining(self) -> int:
        return len(self.texts) - self.done


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
