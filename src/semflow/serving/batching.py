"""Adaptive micro-batching of embed requests.

Concurrent requests are queued; one worker thread takes up to `max_batch_size` texts
(waiting at most `max_latency_ms` for more once the first arrived) and embeds them in one
model call, so 32 clients with one text each cost about one batch of 32.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np


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
        self._q: queue.Queue[tuple[list[str], Future[np.ndarray]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="semflow-batcher", daemon=True)
        self._thread.start()
        self.batches = 0

    def submit(self, texts: Sequence[str]) -> Future[np.ndarray]:
        fut: Future[np.ndarray] = Future()
        self._q.put((list(texts), fut))
        return fut

    async def encode(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.wrap_future(self.submit(texts))

    def close(self) -> None:
        self._q.put(None)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            jobs = [item]
            n = len(item[0])
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
            texts = [t for j in jobs for t in j[0]]
            try:
                out = self.fn(texts)
            except BaseException as err:  # hand the error to every waiting request
                for _, f in jobs:
                    f.set_exception(err)
                continue
            self.batches += 1
            start = 0
            for j, f in jobs:
                f.set_result(out[start : start + len(j)])
                start += len(j)
