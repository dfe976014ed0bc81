"""Waking waiters across processes and nodes with PostgreSQL's LISTEN/NOTIFY.

Every change to a job sends NOTIFY on CHANNEL with the job's id (delivered at commit); new or
given-back work, freed room and cancel requests send NOTIFY on QUEUE_CHANNEL. Each process keeps
one listening connection (Listener) and wakes the threads waiting on a job or on the queue.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from api.exceptions import StoreUnavailable
from api.wakeup import Subscribers

log = logging.getLogger(__name__)

CHANNEL = "sidecar_jobs"  # payload: the id of a job that changed
QUEUE_CHANNEL = "sidecar_queue"  # a job became claimable, a node has room, or a cancel request
QUEUE_KEY = "(queue)"
# The database's clock, as Unix seconds (leases, deadlines and timestamps all use it).
NOW = "extract(epoch from clock_timestamp())::double precision"


class Listener:
    """One LISTEN connection per process, waking the threads that wait on a job (or on new
    queued work, for the dispatcher)."""

    # A waiter also re-reads its row this often: a notification sent while the connection was
    # being re-made is lost (PostgreSQL does not keep them for an absent listener).
    fallback = 2.0

    def __init__(self, url: str, connect_timeout: float) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.subscribers = Subscribers()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-listener", daemon=True)
        self._thread.start()

    def subscribe(self, key: str):
        """An event set whenever `key` (a job id, or QUEUE_KEY) is notified."""
        return self.subscribers.subscribe(key)

    def _wake(self, key: str | None) -> None:
        self.subscribers.wake(key)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.url, autocommit=True, connect_timeout=int(self.connect_timeout)
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {QUEUE_CHANNEL}")
                    self._wake(None)  # whatever was sent while we were away: re-read it
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            key = QUEUE_KEY if notice.channel == QUEUE_CHANNEL else notice.payload
                            self._wake(key)
            except psycopg.Error as exc:
                log.debug("job listener reconnecting: %s", exc)
                self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()


class Waking:
    """Waking and waiting, for PostgresJobStore (`_run`, `version`, `_connections`,
    `_pool_lock`, `_listener`, `url` and `connect_timeout` are the store's)."""

    def _notify(self, job_id: str) -> None:
        # Lost with the connection at worst: waiters re-read their rows when they reconnect.
        with contextlib.suppress(StoreUnavailable):
            self._run("SELECT pg_notify(%s, %s)", (CHANNEL, job_id))

    def notify_queue(self) -> None:
        """Wake every node's dispatcher: there is work to claim, room, or a cancel request."""
        # Lost at worst: dispatchers also look every third of a lease.
        with contextlib.suppress(StoreUnavailable):
            self._run("SELECT pg_notify(%s, '')", (QUEUE_CHANNEL,))

    @contextmanager
    def queue_events(self) -> Iterator[threading.Event]:
        """An event set when work may have become claimable (see notify_queue)."""
        with self._listening().subscribe(QUEUE_KEY) as event:
            yield event

    recheck_seconds = Listener.fallback

    def watch(self, job_id: str):
        """Woken by NOTIFY (see Listener.fallback for why the row is re-read too)."""
        return self._listening().subscribe(job_id)

    def _listening(self) -> Listener:
        self._connections()  # a fork resets the listener with the pool
        if self._listener is None:
            with self._pool_lock:
                if self._listener is None:
                    self._listener = Listener(self.url, self.connect_timeout)
        return self._listener
