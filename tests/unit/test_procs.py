"""Stopping a server's process group (semflow.procs): nothing of it is left running."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from semflow.procs import stop_group


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_worker_that_ignores_sigterm_does_not_outlive_the_server() -> None:
    # The "server" exits on SIGTERM at once; its "worker" ignores SIGTERM (as a busy or
    # stuck worker would) and would keep running in the group.
    script = "(trap '' TERM; sleep 300) & trap 'exit 0' TERM; while :; do sleep 0.1; done"
    proc = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    time.sleep(0.5)  # both are up
    stop_group(proc, grace_s=5)
    assert proc.returncode is not None
    deadline = time.monotonic() + 5
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(proc.pid), "a process of the server's group is still running"


def test_a_server_that_already_exited_is_stopped_without_error() -> None:
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    stop_group(proc, grace_s=1)
    assert proc.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
