"""The embed micro-batcher survives callers that give up, fail or time out."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import closing

import numpy as np
import pytest

from semflow.serving.batching import MicroBatcher


def _lengths(texts: list[str]) -> np.ndarray:
    """What the fake models embed: each text as its length."""
    return np.array([[float(len(t))] for t in texts], dtype=np.float32)


class SlowModel:
    """Embeds texts as their lengths; blocks each call until `gate` is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.gate.wait(10)
        if any(t == "boom" for t in texts):
            raise ValueError("model failed")
        return _lengths(texts)


def test_cancelled_callers_do_not_stop_the_batcher() -> None:
    model = SlowModel()
    with closing(MicroBatcher(model, max_batch_size=4, max_latency_ms=0)) as b:
        running = b.submit(["abc"])  # taken by the thread, blocked in the model
        queued = b.submit(["de"])  # waits in the queue
        assert running.cancel() and queued.cancel()  # both time out, as a 504 does
        model.gate.set()
        after = b.submit(["hello", "x"])
        assert after.result(timeout=5).ravel().tolist() == [5.0, 1.0]
        assert b.alive


def test_asyncio_timeout_then_more_traffic() -> None:
    model = SlowModel()

    async def scenario() -> list[float]:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.encode(["slow"]), 0.05)
        model.gate.set()
        out = await asyncio.wait_for(b.encode(["four"]), 5)
        return out.ravel().tolist()

    with closing(MicroBatcher(model, max_batch_size=8, max_latency_ms=1)) as b:
        assert asyncio.run(scenario()) == [4.0]


def test_a_failed_batch_fails_its_callers_only() -> None:
    model = SlowModel()
    model.gate.set()
    with closing(MicroBatcher(model, max_batch_size=8, max_latency_ms=0)) as b:
        with pytest.raises(ValueError, match="model failed"):
            b.submit(["boom"]).result(timeout=5)
        assert b.submit(["ok"]).result(timeout=5).ravel().tolist() == [2.0]


def test_large_request_runs_in_chunks_and_stops_when_abandoned() -> None:
    model = SlowModel()
    with closing(MicroBatcher(model, max_batch_size=2, max_latency_ms=0)) as b:
        fut = b.submit(["a", "b", "c", "d", "e", "f"])
        fut.cancel()  # abandoned while the first chunk runs
        model.gate.set()
        assert b.submit(["zz"]).result(timeout=5).ravel().tolist() == [2.0]
        # the abandoned request stopped after its first chunk (or before it)
        assert sum(len(c) for c in model.calls if c != ["zz"]) <= 2


def test_a_dead_worker_is_restarted() -> None:
    model = SlowModel()
    model.gate.set()
    with closing(MicroBatcher(model, max_batch_size=2, max_latency_ms=0)) as b:
        b._q.put(None)  # stops the worker thread, as a crash would
        b._thread.join(5)
        assert not b.alive
        assert b.submit(["abc"]).result(timeout=5).ravel().tolist() == [3.0]
        assert b.alive and b.restarts == 1


def test_small_requests_do_not_wait_for_a_large_one() -> None:
    """A large request runs a chunk at a time; a small one that arrives meanwhile is served
    at the next chunk instead of after the whole large request."""
    order: list[str] = []
    step = threading.Semaphore(0)

    def model(texts: list[str]) -> np.ndarray:
        step.acquire(timeout=10)
        order.append(texts[0][0])
        return _lengths(texts)

    with closing(MicroBatcher(model, max_batch_size=2, max_latency_ms=0)) as b:
        large = b.submit(["L1", "L2", "L3", "L4", "L5", "L6"])
        time.sleep(0.05)  # the first chunk of the large request is in the model
        small = b.submit(["s"])
        for _ in range(4):
            step.release()
        assert small.result(timeout=5).ravel().tolist() == [1.0]
        assert large.result(timeout=5).ravel().tolist() == [2.0] * 6
        assert order[:2] == ["L", "s"]  # served right after the chunk that was running


def test_a_model_call_holds_at_most_the_token_budget() -> None:
    calls: list[list[str]] = []

    def model(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return _lengths(texts)

    with closing(
        MicroBatcher(model, max_batch_size=64, max_latency_ms=0, max_batch_tokens=10, cost=len)
    ) as b:
        out = b.submit(["aaaa", "bbbb", "cccc", "x" * 25, "dd"]).result(timeout=5)
        assert out.ravel().tolist() == [4.0, 4.0, 4.0, 25.0, 2.0]
        # 4+4 fit in 10; a text over the whole budget still runs, alone
        assert calls == [["aaaa", "bbbb"], ["cccc"], ["x" * 25], ["dd"]]
