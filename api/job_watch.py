"""Following one job's changes for event streams, long polls and progress sockets.

Streams run in whichever gunicorn worker (or node) the client reached, while the tracker that
writes job state runs in one elected worker of the node that runs the job. They meet in the job
store: `JobStore.wait_for_change` returns when the job's row changed (the embedded store reads
the row a few times a second; the shared one is woken by PostgreSQL's NOTIFY), so no stream ever
asks ComfyUI anything. Each watcher holds a worker thread, so their number per worker is capped;
past the cap the client gets 429 with Retry-After.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from api.exceptions import TooManyWatchers
from api.job import Job
from api.jobstore import JobStore

# How long one wait may last before a stream checks whether its client has gone.
STOP_CHECK_SECONDS = 1.0


class Watchers:
    """A per-worker cap on concurrent watchers (event streams and long polls)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def acquire(self) -> None:
        """Take a slot or raise TooManyWatchers; the caller must release() it."""
        if not self._slots.acquire(blocking=False):
            raise TooManyWatchers(
                f"Too many open event streams and long polls on this worker (limit {self.limit})"
                "; retry shortly or poll without wait",
                retry_after=2,
            )

    def release(self) -> None:
        self._slots.release()

    @contextmanager
    def slot(self):
        self.acquire()
        try:
            yield
        finally:
            self.release()


def wait_for_change(store: JobStore, job_id: str, since: float | None, timeout: float) -> bool:
    """Block until the job's row changes after `since` (or it is final); False on timeout."""
    return store.wait_for_change(job_id, since, timeout)


def changes(
    store: JobStore, job_id: str, heartbeat: float, stop: threading.Event | None = None
) -> Iterator[Job | None]:
    """Yield the job on connect and after every change, None as a heartbeat when nothing
    changed for `heartbeat` seconds; ends after yielding a final (completed/failed/cancelled)
    job, or when the job is gone or `stop` is set."""
    job = store.get(job_id)
    last_sent = time.monotonic()
    while job is not None:
        yield job
        last_sent = time.monotonic()
        if job.finished:
            return
        version = job.updated_at
        while True:
            if stop is not None and stop.is_set():
                return
            wait = min(STOP_CHECK_SECONDS, max(0.0, heartbeat - (time.monotonic() - last_sent)))
            if store.wait_for_change(job_id, version, wait):
                break
            if time.monotonic() - last_sent >= heartbeat:
                last_sent = time.monotonic()
                yield None
        job = store.get(job_id)
