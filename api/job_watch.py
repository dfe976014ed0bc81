"""Following one job's changes for event streams, long polls and progress sockets.

Streams run in whichever gunicorn worker the client reached, while the tracker that writes
job state runs in one elected worker. They meet in the job database: a watcher compares the
job row's `updated_at` a few times a second (a primary-key read of SQLite, microseconds), so no
stream ever asks ComfyUI anything. Each watcher holds a worker thread, so their number per
worker is capped; past the cap the client gets 429 with Retry-After.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from api.exceptions import TooManyWatchers
from api.job import FINISHED, Job
from api.jobstore import JobStore

# A watcher looks at its job row often right after it starts or after a change (when the next
# change is likely soon: a job just submitted finishes within milliseconds on a fast GPU
# queue) and backs off to POLL_SECONDS while nothing happens. A primary-key read costs tens of
# microseconds, so even the fast phase is cheap.
POLL_SECONDS = 0.1
FIRST_POLL = 0.005


def _backoff(interval: float) -> float:
    return min(interval * 1.5, POLL_SECONDS)


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
    deadline = time.monotonic() + timeout
    interval = FIRST_POLL
    while True:
        version = store.version(job_id)
        if version is None:
            return True  # gone (purged): let the caller answer 404
        updated_at, status = version
        if status in FINISHED or (since is not None and updated_at != since):
            return True
        if since is None:
            since = updated_at
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))
        interval = _backoff(interval)


def changes(
    store: JobStore, job_id: str, heartbeat: float, stop: threading.Event | None = None
) -> Iterator[Job | None]:
    """Yield the job row on connect and after every change, None as a heartbeat when nothing
    changed for `heartbeat` seconds; ends after yielding a final (completed/failed/cancelled)
    row."""
    last_version = None
    last_sent = time.monotonic()
    interval = FIRST_POLL
    while stop is None or not stop.is_set():
        version = store.version(job_id)
        if version is None:
            return
        if version[0] != last_version:
            job = store.get(job_id)
            if job is None:
                return
            last_version = job.updated_at
            last_sent = time.monotonic()
            interval = FIRST_POLL
            yield job
            if job.finished:
                return
        elif time.monotonic() - last_sent >= heartbeat:
            last_sent = time.monotonic()
            yield None
        time.sleep(interval)
        interval = _backoff(interval)
