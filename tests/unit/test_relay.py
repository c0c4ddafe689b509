"""The job relay between worker processes (semflow.serving.relay), two ends in one process:
calls for another worker's job reach it and its answer comes back unchanged, errors keep
their status, and hostile ids, stopped workers and broken peers end in clear answers."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import orjson
import pytest

from semflow.errors import SettingsError
from semflow.serving.errors import ApiError, NotFound, error_answer
from semflow.serving.jobs import JobRunner
from semflow.serving.relay import JobRelay, private_dir


class Worker:
    """A relay end with its own jobs, answering as the engine does."""

    def __init__(self, directory: Path, timeout_s: float = 5.0) -> None:
        self.relay = JobRelay(directory, self.answer, timeout_s)
        self.jobs = JobRunner(1, 4, 60.0, self.relay.id_prefix)

    def answer(self, kind: str, action: str, task_id: str, owner: str) -> tuple[int, bytes]:
        try:
            if action == "get":
                return 200, orjson.dumps(self.jobs.result(task_id, kind, owner))
            return 200, orjson.dumps(self.jobs.get(task_id, kind, owner).describe())
        except Exception as err:
            status, body = error_answer(err)
            return status, orjson.dumps(body)


@pytest.fixture
def pair(tmp_path: Path):
    a, b = Worker(tmp_path / "relay"), Worker(tmp_path / "relay")
    yield a, b
    a.relay.close()
    b.relay.close()


def _done(worker: Worker, job_id: str) -> None:
    deadline = time.monotonic() + 10
    while worker.jobs.get(job_id, "embed_job", "k1").status == "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_another_workers_job_answers_through_the_relay(pair) -> None:
    a, b = pair
    job = a.jobs.submit("embed_job", "k1", lambda: {"vectors": [[0.5, 0.25]]})
    assert job.id.startswith(f"{a.relay.tag}-") and a.relay.owns(job.id)
    assert not b.relay.owns(job.id)
    _done(a, job.id)
    status = orjson.loads(b.relay.ask("embed_job", "status", job.id, "k1"))
    assert status["task_id"] == job.id and status["status"] == "completed"
    assert orjson.loads(b.relay.ask("embed_job", "get", job.id, "k1")) == {"vectors": [[0.5, 0.25]]}
    with pytest.raises(NotFound):  # a live worker's tag with an id too long to be one
        b.relay.ask("embed_job", "status", f"{a.relay.tag}-" + "0" * 100_000, "k1")


def test_errors_keep_their_status_and_sentence(pair) -> None:
    a, b = pair
    gate = threading.Event()
    running = a.jobs.submit("embed_job", "k1", gate.wait)
    with pytest.raises(ApiError, match="still in progress") as err:
        b.relay.ask("embed_job", "get", running.id, "k1")
    assert err.value.status == 409
    gate.set()
    # another key, or another kind: the same 404 as an id that does not exist
    for kind, owner in (("embed_job", "k2"), ("classify_job", "k1")):
        with pytest.raises(ApiError) as nf:
            b.relay.ask(kind, "status", running.id, owner)
        assert str(nf.value) == f"no {kind} task {running.id!r}"
        assert nf.value.status == 404


@pytest.mark.parametrize(
    "task_id",
    ["", "../../etc/passwd", "ZZZZZZZZ-00", "deadbeef", "dead/eef-1", "0123456789-abc"],
)
def test_ids_that_name_no_worker_are_404_without_a_connection(pair, task_id: str) -> None:
    _, b = pair
    with pytest.raises(NotFound, match="no embed_job task"):
        b.relay.ask("embed_job", "status", task_id, "k1")


def test_a_stopped_workers_jobs_are_gone(pair) -> None:
    a, b = pair
    job = a.jobs.submit("embed_job", "k1", lambda: 1)
    a.relay.close()
    assert not a.relay.path.exists()
    with pytest.raises(NotFound):
        b.relay.ask("embed_job", "status", job.id, "k1")
    # a socket file left by a killed worker: nobody listens, still 404
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(a.relay.path))
    dead.close()
    with pytest.raises(NotFound):
        b.relay.ask("embed_job", "status", job.id, "k1")


def test_a_broken_peer_does_not_stop_the_relay(pair) -> None:
    a, b = pair
    job = a.jobs.submit("embed_job", "k1", lambda: 7)
    _done(a, job.id)
    for payload in (
        b"\xff" * 12,  # a length far over the limit
        (5).to_bytes(8, "big") + b"[1,2]",  # JSON, not a request
        (2).to_bytes(8, "big") + b"{x",  # not JSON
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(a.relay.path))
            s.sendall(payload)
            # dropped without an answer (a reset when unread bytes were left)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(10) == b""
    assert orjson.loads(b.relay.ask("embed_job", "get", job.id, "k1")) == 7


def test_an_owner_that_does_not_answer_is_a_503(tmp_path: Path) -> None:
    gate = threading.Event()
    slow = JobRelay(tmp_path / "r", lambda *a: (gate.wait(), (200, b"1"))[1], 5.0)
    asker = JobRelay(tmp_path / "r", lambda *a: (200, b"1"), 0.3)
    try:
        with pytest.raises(ApiError, match="did not answer") as err:
            asker.ask("embed_job", "status", f"{slow.tag}-x", "k1")
        assert err.value.status == 503
    finally:
        gate.set()
        slow.close()
        asker.close()


def test_the_directory_must_be_private(tmp_path: Path) -> None:
    d = private_dir(tmp_path / "new")
    assert (d.stat().st_mode & 0o777) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    with pytest.raises(SettingsError, match="mode 0700"):
        JobRelay(shared, lambda *a: (200, b"1"), 1.0)
    assert list(shared.iterdir()) == []  # no socket was left there


def test_settings_place_the_relay_per_home(tmp_path: Path) -> None:
    from semflow.config import load_settings

    one, two = load_settings(home=tmp_path / "a"), load_settings(home=tmp_path / "b")
    assert one.relay_dir != two.relay_dir
    assert one.relay_dir == load_settings(home=tmp_path / "a").relay_dir
    assert len(str(one.relay_dir / "0123abcd.sock")) < 100  # a Unix socket path's limit


def test_a_worker_that_fails_to_start_leaves_no_socket(tmp_path: Path, monkeypatch) -> None:
    """The index watcher failing at start (after the model loaded) leaves nothing in the
    relay directory that other workers would try to reach."""
    from semflow.app import Services
    from semflow.config import load_settings
    from semflow.serving import engine as engine_mod

    def broken(*args, **kwargs):
        raise RuntimeError("the index watcher could not start")

    monkeypatch.setattr(engine_mod, "IndexWatcher", broken)
    s = load_settings(home=tmp_path / "home", workers=2, redis_url=None)
    with pytest.raises(RuntimeError, match="could not start"):
        engine_mod.Engine(Services.from_settings(s))
    assert not s.relay_dir.exists() or list(s.relay_dir.iterdir()) == []
