"""Constants and small helpers shared by tests (importable as `tests.helpers`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

PG_URL = os.environ.get("SEMFLOW_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SEMFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own on a free port, to stop and start at will (the
    shared Redis on 6379 is never touched)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> None:
        import shutil
        import subprocess
        import time

        import redis

        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


# -- long documents (semflow.chunking) ------------------------------------------------------
FACT = "The access code for the Nightingale vault is 7419."
FACT_QUERY = "What is the access code of the Nightingale vault?"
_PLANTS = ["tomatoes", "roses", "tulips", "basil", "carrots", "lavender", "beans", "mint"]
_PLACES = ["the old fence", "the south wall", "the pond", "the shed", "the orchard"]


def run_tree(
    cmd: list[str], *, timeout: float, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(cmd, capture_output=True, text=True)` whose whole process tree ends
    with it. On a timeout, or when pytest-timeout interrupts the test, the command's children
    (dvc's stage scripts, bentoml's workers) are killed too: left running, they would slow
    every later test on a 2-core runner and make it time out in turn."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,  # type: ignore[arg-type]
    )
    with proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            with suppress(ProcessLookupError):  # the group is gone once everyone exited
                os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def garden_prose(sentences: int, start: int = 0) -> str:
    """Plain prose about a garden, nothing like FACT: filler for long documents."""
    return " ".join(
        f"In week {i} the gardener planted {_PLANTS[i % 8]} near {_PLACES[i % 5]} and "
        f"watered them {i % 3 + 1} times before the evening rain."
        for i in range(start, start + sentences)
    )


def long_text(chars: int) -> str:
    """About `chars` characters of garden prose whose last sentence, only, is FACT."""
    text = ""
    n = 10
    while len(text) < chars - len(FACT):
        text = garden_prose(n)
        n += 10
    return f"{text[: chars - len(FACT) - 1].rsplit('.', 1)[0]}. {FACT}"


def text_of_chunks(chunker, chunks: int) -> str:
    """Garden prose that `chunker` splits into exactly `chunks` chunks."""
    n = 1
    while len(chunker.split(garden_prose(n))) < chunks:
        n += 1
    assert len(chunker.split(garden_prose(n))) == chunks
    return garden_prose(n)


def lose_id_trackers(gen_dir: Path, aside: Path) -> Callable[[], None]:
    """Move an index generation's id-mapping files to `aside`, as an interrupted copy or
    restore leaves it; returns what puts them back (the copy completed)."""
    aside.mkdir(parents=True, exist_ok=True)
    moved = []
    for i, f in enumerate(sorted(gen_dir.rglob("*id_tracker.mappings"))):
        shutil.move(f, aside / str(i))
        moved.append((aside / str(i), f))

    def restore() -> None:
        for kept, f in moved:
            shutil.move(kept, f)

    return restore
