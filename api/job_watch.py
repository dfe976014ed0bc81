"""Following one job's changes for event streams, long polls and progress sockets.

Streams run in whichever gunicorn worker (or node) the client reached, while the tracker that
writes job state runs in one elected worker of the node that runs the job. They meet in the job
store: `JobStore.wait_for_change` returns when the job's row changed, woken by the writer
(a datagram per waiting process for the embedded store, api/wakeup.py; PostgreSQL's NOTIFY for
the shared one), so no stream ever asks ComfyUI anything. Each watcher holds a worker thread,
so their number per worker is capped, and so is each API key's share of them (one key cannot
take every slot); past either cap the client gets 429 with Retry-After. A stream also has a
maximum lifetime (STREAM_MAX_SECONDS): then it ends, and the client reconnects, which checks
both caps again.
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


class Expired:
    """What changes() yields last when a stream must end before its job does: the client is
    to reconnect. `reason` says why; `close_code`, the WebSocket's close code for it."""

    def __init__(self, reason: str, close_code: int) -> None:
        self.reason, self.close_code = reason, close_code


# The stream reached its maximum lifetime (STREAM_MAX_SECONDS).
EXPIRED = Expired("stream lifetime reached: reconnect", 1001)
# The worker is stopping (JobStore.stop_waits): another one, or this sidecar once restarted,
# follows on. 1012: the WebSocket's "service restart".
RESTARTING = Expired("the server is restarting: reconnect", 1012)


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


def changes(
    store: JobStore,
    job_id: str,
    heartbeat: float,
    stop: threading.Event | None = None,
    lifetime: float | None = None,
) -> Iterator[Job | Expired | None]:
    """Yield the job on connect and after every change, None as a heartbeat when nothing
    changed for `heartbeat` seconds; ends after yielding a final (completed/failed/cancelled)
    job, when the job is gone or `stop` is set, with EXPIRED once `lifetime` seconds have
    passed, or with RESTARTING when the store's waits are stopped."""
    started = time.monotonic()
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
            if store.waits_stopped:
                yield RESTARTING
                return
            now = time.monotonic()
            left = float("inf") if lifetime is None else lifetime - (now - started)
            if left <= 0:
                yield EXPIRED
                return
            wait = min(STOP_CHECK_SECONDS, max(0.0, heartbeat - (now - last_sent)), left)
            if store.wait_for_change(job_id, version, wait):
                break
            if time.monotonic() - last_sent >= heartbeat:
                last_sent = time.monotonic()
                yield None
        job = store.get(job_id)


def until_settled(store: JobStore, job: Job, seconds: float, uploads: bool) -> Job | None:
    """The job once it is settled (final, with its save_to_disk copy and, with `uploads`, its
    uploads recorded), or as it stands when `seconds` have passed; None if it is gone."""
    deadline = time.monotonic() + seconds
    if not job.finished:
        # On the way, only the status is looked at: the row is read once, at the end.
        store.wait_for_end(job.id, seconds)
        job = store.get(job.id)
        if job is None:
            return None
    while not job.settled(uploads):
        left = deadline - time.monotonic()
        if left <= 0 or store.waits_stopped:
            break
        store.wait_for_change(job.id, job.updated_at, left, after_final=True)
        job = store.get(job.id)
        if job is None:
            return None
    return job
