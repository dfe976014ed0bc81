"""Following one job's changes for event streams, long polls and progress sockets.

Streams run in whichever gunicorn worker the client reached, while the tracker that writes
job state runs in one elected worker. They meet in the job database: a watcher compares the
job row's `updated_at` a few times a second (a primary-key read of SQLite, microseconds), so no
stream ever asks ComfyUI anything. Each watcher holds a worker thread, so their number per
worker is capped, and so is each API key's share of them (one key cannot take every slot);
past either cap the client gets 429 with Retry-After. A stream also has a maximum lifetime
(STREAM_MAX_SECONDS): then it ends, and the client reconnects, which checks both caps again.
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


class Expired:
    """What changes() yields last when the stream reached its maximum lifetime."""


EXPIRED = Expired()


class Watchers:
    """A per-worker cap on concurrent watchers (event streams, long polls, progress sockets),
    and a smaller one per API key (None: no key, no per-key cap)."""

    def __init__(self, limit: int, per_key: int = 0) -> None:
        self.limit = limit
        self.per_key = per_key
        self._lock = threading.Lock()
        self._total = 0
        self._by_key: dict[str, int] = {}

    def acquire(self, key: str | None = None) -> None:
        """Take a slot or raise TooManyWatchers; the caller must release() it."""
        with self._lock:
            if self._total >= self.limit:
                raise TooManyWatchers(
                    f"Too many open event streams and long polls on this worker (limit"
                    f" {self.limit}); retry shortly or poll without wait",
                    retry_after=2,
                )
            held = self._by_key.get(key, 0) if key is not None else 0
            if key is not None and self.per_key and held >= self.per_key:
                raise TooManyWatchers(
                    f"This API key holds as many event streams, long polls and progress"
                    f" sockets as it may (limit {self.per_key} per worker); close one or poll"
                    " without wait",
                    retry_after=2,
                )
            self._total += 1
            if key is not None:
                self._by_key[key] = held + 1

    def release(self, key: str | None = None) -> None:
        with self._lock:
            self._total -= 1
            if key is not None:
                left = self._by_key.get(key, 1) - 1
                if left > 0:
                    self._by_key[key] = left
                else:
                    self._by_key.pop(key, None)

    @contextmanager
    def slot(self, key: str | None = None):
        self.acquire(key)
        try:
            yield
        finally:
            self.release(key)


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
    store: JobStore,
    job_id: str,
    heartbeat: float,
    stop: threading.Event | None = None,
    lifetime: float | None = None,
) -> Iterator[Job | Expired | None]:
    """Yield the job row on connect and after every change, None as a heartbeat when nothing
    changed for `heartbeat` seconds; ends after yielding a final (completed/failed/cancelled)
    row, or EXPIRED once `lifetime` seconds have passed."""
    last_version = None
    last_sent = started = time.monotonic()
    interval = FIRST_POLL
    while stop is None or not stop.is_set():
        if lifetime is not None and time.monotonic() - started >= lifetime:
            yield EXPIRED
            return
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
