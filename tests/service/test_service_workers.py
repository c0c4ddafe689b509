"""The Bento with SEMFLOW_WORKERS=2 on the embedded backend: a real `bentoml serve` whose two
worker processes both open the published generation, both answer /search and both follow
the LIVE pointer to a newly published generation on their own."""

from __future__ import annotations

import asyncio
import time
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
