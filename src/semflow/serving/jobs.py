"""Long jobs (embed or classify up to `max_job_texts` texts), owned by the key that made them.

A job runs on a pool of its own (`job_workers` threads), so jobs never take the threads of
the interactive endpoints. At most `max_jobs` are kept: when all of them are still queued
or running, a new one is refused with 429. Results stay in memory only (no request, header
or key is ever written anywhere) and are dropped `job_ttl_s` after the job finished, or
earlier when room is needed for a new job. Another key asking for a job gets 404, exactly
as for a job that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from semflow.serving.errors import ApiError, Conflict, NotFound, TooManyRequests, status_for

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Job:
    id: str
    kind: str
    owner: str
    created_at: str = field(default_factory=_now)
    executed_at: str | None = None
    status: str = "in_progress"  # -> completed | failure | cancelled
    result: Any = None
    error: str | None = None
    error_status: int = 500
    finished: float | None = None  # monotonic time, for expiry
    future: Future[Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "task_id": self.id,
            "status": self.status,
            "created_at": self.created_at,
            "executed_at": self.executed_at,
        }


class JobRunner:
    def __init__(self, workers: int, max_jobs: int, ttl_s: float, id_prefix: str = "") -> None:
        self.max_jobs = max_jobs
        self.id_prefix = id_prefix  # names this worker in its job ids (semflow.serving.relay)
        self.ttl_s = ttl_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="semflow-job")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, kind: str, owner: str, fn: Callable[[], Any]) -> Job:
        """Queue `fn` as a job of `owner`; TooManyRequests (429) when the queue is full."""
        with self._lock:
            self._expire()
            if len(self._jobs) >= self.max_jobs and not self._evict_one():
                raise TooManyRequests(
                    f"{self.max_jobs} jobs are queued or running; retry when one has finished"
                )
            job = Job(f"{self.id_prefix}{uuid.uuid4().hex}", kind, owner)
            self._jobs[job.id] = job
        job.future = self._pool.submit(self._run, job, fn)
        return job

    def _run(self, job: Job, fn: Callable[[], Any]) -> None:
        job.executed_at = _now()
        try:
            job.result, job.status = fn(), "completed"
        except Exception as err:
            job.status, job.error_status = "failure", status_for(err)
            if job.error_status >= 500 and not isinstance(err, ApiError):  # a bug: log it all
                log.exception("job %s failed", job.id, exc_info=err)
                job.error = "the job failed; see the server log"
            else:
                job.error = str(err)
        job.finished = time.monotonic()

    def get(self, job_id: str, kind: str, owner: str) -> Job:
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
        if job is None or job.kind != kind or job.owner != owner:
            raise NotFound(f"no {kind} task {job_id!r}")
        return job

    def result(self, job_id: str, kind: str, owner: str) -> Any:
        """The job's result; 409 while it runs, the job's own error status if it failed."""
        job = self.get(job_id, kind, owner)
        if job.status == "in_progress":
            raise Conflict(f"task {job_id!r} is still in progress")
        if job.status == "cancelled":
            raise Conflict(f"task {job_id!r} was cancelled")
        if job.status == "failure":
            raise ApiError(job.error or "the job failed", job.error_status)
        return job.result

    def cancel(self, job_id: str, kind: str, owner: str) -> Job:
        """Cancel a job that has not started yet (a running one finishes)."""
        job = self.get(job_id, kind, owner)
        if job.future is not None and job.future.cancel():
            job.status, job.finished = "cancelled", time.monotonic()
        return job

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.ttl_s
        for jid in [j.id for j in self._jobs.values() if j.finished and j.finished < cutoff]:
            del self._jobs[jid]

    def _evict_one(self) -> bool:
        done = [j for j in self._jobs.values() if j.finished is not None]
        if not done:
            return False
        del self._jobs[min(done, key=lambda j: j.finished or 0.0).id]
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
