"""Progress of long work: a bar with rate and ETA on a terminal, plain log lines elsewhere.

Airflow task logs and CI output are files, where a redrawn bar is noise: there the same
progress is a log line every `every_s` seconds (and at the end), with done/total, rate and
ETA. A terminal (stderr is a TTY) gets a tqdm bar. `SEMFLOW_PROGRESS=bar|log|off` overrides.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("semflow.progress")


def _mode() -> str:
    mode = os.environ.get("SEMFLOW_PROGRESS", "").lower()
    if mode in ("bar", "log", "off"):
        return mode
    return "bar" if sys.stderr.isatty() else "log"


class _LogProgress:
    def __init__(self, desc: str, total: int, unit: str, every_s: float) -> None:
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.t0, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "?" if left == float("inf") else f"{left:.0f}s"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
            f"{rate:.1f} {self.unit}/s, eta {eta}"
        )

    def close(self) -> None:
        pass


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def progress(desc: str, total: int, unit: str = "items", every_s: float = 10.0) -> Iterator:
    """`with progress("embedding", n, "texts") as p: ... p.update(k)`."""
    mode = _mode()
    if mode == "bar":
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
    elif mode == "log":
        bar = _LogProgress(desc, total, unit, every_s)
    else:
        bar = _Off()
    try:
        yield bar
    finally:
        bar.close()
