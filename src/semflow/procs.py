"""Servers a command starts in their own session (`start_new_session=True`): stopping one
stops its whole process group, workers included."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress


def stop_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM `proc`'s process group, wait up to `grace_s` for `proc`, then SIGKILL whatever
    is left of the group: a server's workers can outlive it (one that ignores SIGTERM, or
    one still busy), and left running they hold its port and its CPU."""
    with suppress(ProcessLookupError):  # it may have exited on its own (a failed start)
        os.killpg(proc.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    with suppress(ProcessLookupError):  # nothing of the group is left
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
