"""The Bento with SEMFLOW_WORKERS=2 on the embedded backend: a real `bentoml serve` whose two
worker processes both open the published generation, both answer /search and both follow
the LIVE pointer to a newly published generation on their own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.service.serve_helpers import ADMIN, build_index, docs_for, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEXTS = ["I lost my card yesterday", "How do I reset my password", "My transfer is late"]


async def _round(url: str, n: int = 16) -> list[tuple[str, int]]:
    """(worker, generation) of `n` concurrent searches, each on a connection of its own
    (a kept-alive connection stays with the worker that accepted it)."""

    async def one(i: int) -> tuple[str, int]:
        async with httpx.AsyncClient(headers=ADMIN, timeout=60) as c:
            r = await c.post(f"{url}/search", json={"query": TEXTS[i % 3], "tenant": "bank"})
        assert r.status_code == 200, r.text
        return r.headers["x-semflow-worker"], r.json()["generation"]

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def _generations_per_worker(url: str, want: int, timeout_s: float) -> dict[str, set[int]]:
    """Search until two workers were seen answering from generation `want` (or time out)."""
    seen: dict[str, set[int]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker, gen in asyncio.run(_round(url)):
            seen.setdefault(worker, set()).add(gen)
        if sum(want in gens for gens in seen.values()) >= 2:
            break
    return seen


def test_two_workers_answer_and_follow_the_live_generation(tmp_path: Path, embedder) -> None:
    home = tmp_path / "home"
    first = build_index(home, embedder, docs_for("bank", TEXTS))
    with serve(home, tmp_path, SEMFLOW_WORKERS="2", SEMFLOW_INDEX_POLL_S="0.3") as url:
        seen = _generations_per_worker(url, first, 90)
        assert len(seen) == 2, seen  # both processes answer
        assert all(gens == {first} for gens in seen.values()), seen
        second = build_index(home, embedder, docs_for("bank", ["gold card order"], prefix="n"))
        assert second == first + 1
        after = _generations_per_worker(url, second, 60)
        moved = [w for w, gens in after.items() if second in gens]
        assert set(moved) == set(seen), after  # each worker moved to the new generation
        # /model reports the same generation whichever worker answers
        info = httpx.get(f"{url}/model", headers=ADMIN, timeout=30).json()
        assert info["index_generation"] == second


@pytest.mark.parametrize(
    ("env", "sentence"),
    [
        ({"SEMFLOW_WORKERS": "0"}, "SEMFLOW_WORKERS: Input should be greater than or equal to 1"),
        (
            {"SEMFLOW_WORKERS": "2", "SEMFLOW_INDEX_BACKEND": "server"},
            "SEMFLOW_WORKERS=2 needs an index every process can open",
        ),
    ],
)
def test_a_bad_worker_setting_stops_the_start_with_a_sentence(
    tmp_path: Path, env: dict[str, str], sentence: str
) -> None:
    with (
        pytest.raises(RuntimeError, match="bentoml serve exited") as err,
        serve(tmp_path / "home", tmp_path, **env),
    ):
        pass
    assert sentence in str(err.value)


def _fresh(method: str, url: str, headers: dict[str, str], **kw) -> httpx.Response:
    """One call on a new connection (a kept-alive one stays with the worker that took it)."""
    with httpx.Client(headers=headers, timeout=60) as c:
        return c.request(method, url, **kw)


def _from_both(call: Callable[[], httpx.Response], tries: int = 40) -> list[httpx.Response]:
    """`call`'s answers until both workers have given one (asserted), at most `tries`."""
    out: list[httpx.Response] = []
    while len({r.headers["x-semflow-worker"] for r in out}) < 2 and len(out) < tries:
        out.append(call())
    assert len({r.headers["x-semflow-worker"] for r in out}) == 2, [r.headers for r in out]
    return out


def test_a_job_answers_from_every_worker(tmp_path: Path, embedder) -> None:
    """Two workers: a job lives in the memory of the one that ran it, yet its status, result
    and cancel answer whichever worker a call reaches; another key gets 404 from both."""
    from tests.service.serve_helpers import BANK, OTHER

    home = tmp_path / "home"
    build_index(home, embedder, docs_for("bank", TEXTS))
    with serve(home, tmp_path, SEMFLOW_WORKERS="2") as url:
        r = _fresh("POST", f"{url}/embed_job/submit", BANK, json={"texts": TEXTS})
        assert r.status_code == 200, r.text
        task, owner_worker = r.json()["task_id"], r.headers["x-semflow-worker"]
        answered: dict[str, list[int]] = {}
        results = []
        deadline = time.monotonic() + 90
        # until a worker other than the job's has answered both a status and a result
        while time.monotonic() < deadline and len(answered) < 2:
            st = _fresh("GET", f"{url}/embed_job/status", BANK, params={"task_id": task})
            got = _fresh("GET", f"{url}/embed_job/get", BANK, params={"task_id": task})
            for resp in (st, got):
                answered.setdefault(resp.headers["x-semflow-worker"], []).append(resp.status_code)
            assert st.status_code == 200, st.text
            assert st.json()["task_id"] == task
            # 409 only while it runs (it may finish between the two calls)
            allowed = {200} if st.json()["status"] == "completed" else {200, 409}
            assert got.status_code in allowed, got.text[:300]
            if got.status_code == 200:
                results.append(got.json()["embeddings"])
        assert len(answered) == 2, answered  # both workers answered for the one job
        assert any(w != owner_worker for w in answered)
        assert results and all(r == results[0] for r in results)
        assert len(results[0]) == len(TEXTS) and len(results[0][0]) == embedder.dimension
        # cancel reaches the owner too: a finished job stays completed, whichever worker asks
        cancel = _from_both(
            lambda: _fresh("PUT", f"{url}/embed_job/cancel", BANK, params={"task_id": task})
        )
        for r in cancel:
            assert r.status_code == 200, r.text
            assert r.json()["task_id"] == task and r.json()["status"] == "completed"
        # another key: 404 from either worker, exactly as for an id that does not exist
        for r in _from_both(
            lambda: _fresh("GET", f"{url}/embed_job/status", OTHER, params={"task_id": task})
        ):
            assert r.status_code == 404, r.text
            assert r.json() == {"error": f"no embed_job task {task!r}"}
        # ids that name no worker, or a path, are plain 404s on both
        for bad in ("deadbeef-" + "0" * 32, "../../etc/passwd", task.replace(task[:8], "0" * 8)):
            r = _fresh("GET", f"{url}/embed_job/status", BANK, params={"task_id": bad})
            assert r.status_code == 404, r.text
