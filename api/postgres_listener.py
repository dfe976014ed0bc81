"""Waking waiters across processes and nodes with PostgreSQL's LISTEN/NOTIFY.

Every change to a job sends NOTIFY on CHANNEL with the job's id (delivered at commit); new or
given-back work and cancel requests send NOTIFY on QUEUE_CHANNEL, a node's freed room on
ROOM_CHANNEL. Each process keeps one listening connection (Listener) and wakes the threads
waiting on a job or on the queue.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from api.exceptions import StoreUnavailable
from api.job import JobStatus
from api.wakeup import Subscribers

log = logging.getLogger(__name__)

# Payload: "<job id> <updated_at> <status>" of a job that changed (its version, so that a waiter
# needs no read to know it), or the job id alone (the waiter reads the version).
CHANNEL = "sidecar_jobs"
# A job became claimable, or a cancel request. Payload: empty, or the node that could not take a
# job it accepted (its own dispatcher could not either: it is not woken).
QUEUE_CHANNEL = "sidecar_queue"
# A job a node held ended: that node has room. Payload: the node. Only its dispatcher is woken:
# no other node's room changed, and every node's dispatcher looking for work (two queries) at
# each job's end made a cluster's queries grow with its nodes. Nodes of an older version do not
# listen here; they send their own freed room on QUEUE_CHANNEL, waking every node.
ROOM_CHANNEL = "sidecar_room"
QUEUE_KEY = "(queue)"
# The database's clock, as Unix seconds (leases, deadlines and timestamps all use it).
NOW = "extract(epoch from clock_timestamp())::double precision"
STATUSES = {status.value for status in JobStatus}
# Versions told by notifications, kept for this many jobs (the most recently told).
TOLD_KEPT = 10_000


def notify_sql(table: str = "jobs") -> str:
    """pg_notify of a job's id and version, for a statement that has its row as `table`."""
    return (
        f"pg_notify('{CHANNEL}', {table}.id || ' ' || {table}.updated_at::text"
        f" || ' ' || {table}.status)"
    )


def told(payload: str) -> tuple[str, tuple[float, str] | None]:
    """(job id, its version or None) from a payload on CHANNEL."""
    job_id, version = payload, None
    parts = payload.rsplit(" ", 2)
    if len(parts) == 3 and parts[2] in STATUSES:
        with contextlib.suppress(ValueError):
            job_id, version = parts[0], (float(parts[1]), parts[2])
    return job_id, version


class Listener:
    """One LISTEN connection per process, waking the threads that wait on a job (or on new
    queued work, for the dispatcher)."""

    # A waiter also re-reads its row this often: a notification sent while the connection was
    # being re-made is lost (PostgreSQL does not keep them for an absent listener).
    fallback = 2.0

    def __init__(self, url: str, connect_timeout: float, own_node: str | None = None) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.own_node = own_node
        self.subscribers = Subscribers()
        # job id -> the version its last notification told (written by this listener's thread
        # only, the newest last; cleared when notifications may have been missed).
        self.told: dict[str, tuple[float, str]] = {}
        # How many times the queue channel woke QUEUE_KEY (or may have been missed): what
        # may bring a cancel request, where a job's end (ROOM_CHANNEL) brings only room.
        self.queue_notices = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-listener", daemon=True)
        self._thread.start()

    def subscribe(self, key: str):
        """An event set whenever `key` (a job id, or QUEUE_KEY) is notified."""
        return self.subscribers.subscribe(key)

    def _wake(self, key: str | None) -> None:
        self.subscribers.wake(key)

    def _notified(self, channel: str, payload: str) -> None:
        if channel == QUEUE_CHANNEL:
            if not payload or payload != self.own_node:
                self.queue_notices += 1
                self._wake(QUEUE_KEY)
            return
        if channel == ROOM_CHANNEL:
            if self.own_node is None or payload == self.own_node:
                self._wake(QUEUE_KEY)
            return
        job_id, version = told(payload)
        # Moved to the end (the newest), or forgotten: a notification without a version says
        # the one told before is no longer the job's. Kept only while a thread here waits on
        # the job (one that starts waiting reads the version itself).
        self.told.pop(job_id, None)
        if version is not None and self.subscribers.watched(job_id):
            self.told[job_id] = version
            if len(self.told) > TOLD_KEPT:
                del self.told[next(iter(self.told))]
        self._wake(job_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.url, autocommit=True, connect_timeout=int(self.connect_timeout)
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {QUEUE_CHANNEL}")
                    conn.execute(f"LISTEN {ROOM_CHANNEL}")
                    self.told.clear()
                    self.queue_notices += 1
                    self._wake(None)  # whatever was sent while we were away: re-read it
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            self._notified(notice.channel, notice.payload)
            except psycopg.Error as exc:
                log.debug("job listener reconnecting: %s", exc)
                self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()


class Waking:
    """Waking and waiting, for PostgresJobStore (`_run`, `version`, `_connections`,
    `_pool_lock`, `_listener`, `url` and `connect_timeout` are the store's)."""

    # The cluster node of this process (set by api/fleet.py): its dispatcher is not woken by
    # the jobs this node itself could not take.
    own_node: str | None = None

    def notify_queue(self, passed_over_by: str | None = None) -> None:
        """Wake every node's dispatcher: there is work to claim, or a cancel request;
        with `passed_over_by`, every node's but that one's (it could not take the job)."""
        # Lost at worst: dispatchers also look every third of a lease.
        with contextlib.suppress(StoreUnavailable):
            self._run("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, passed_over_by or ""))

    @contextmanager
    def queue_events(self) -> Iterator[threading.Event]:
        """An event set when work may have become claimable (see notify_queue)."""
        with self._listening().subscribe(QUEUE_KEY) as event:
            yield event

    def queue_notices(self) -> int:
        """A number that changes whenever the queue channel wakes this process (new work,
        work given back, a cancel request), and not for a job's end (room only)."""
        return self._listening().queue_notices

    recheck_seconds = Listener.fallback

    def watch(self, job_id: str):
        """Woken by NOTIFY (see Listener.fallback for why the row is re-read too)."""
        return self._listening().subscribe(job_id)

    def _wake_every_waiter(self) -> None:
        listener = self._listener  # none yet: nothing waits
        if listener is not None:
            listener.subscribers.wake_waiters(None)

    def announced_version(self, job_id: str, seen: tuple[float, str]) -> tuple[float, str] | None:
        # The notification told the version: no read, unless it is not newer than the one the
        # waiter had (a notification of an older change, delivered after the waiter's read).
        version = self._listening().told.get(job_id)
        if version is not None and version[0] > seen[0]:
            return version
        return self.version(job_id)

    def _listening(self) -> Listener:
        self._connections()  # a fork resets the listener with the pool
        if self._listener is None:
            with self._pool_lock:
                if self._listener is None:
                    self._listener = Listener(self.url, self.connect_timeout, self.own_node)
        return self._listener
