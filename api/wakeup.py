"""Waking, in every process of this host, the threads that wait on a job, right after a write.

The embedded store is written by one process (the elected tracker, and request threads of any
worker) and watched from others (long polls, event streams and progress sockets in whichever
worker the client reached). So that a waiter answers the moment its job changes instead of at
its next look at the row, each process that waits binds one Unix datagram socket in
STATE_DIR/wake/, and a writer sends the changed job's id to every socket there after its
commit; a thread per process wakes the waiters of that job. A socket whose process is gone
refuses the datagram at once, and its file is removed.

A process's socket says when nothing in it waits or follows (QUIET on its file): a writer
skips those. Before, every write woke every worker's receiving thread, also where nothing
waited (a worker serving plain polls and submissions): the receiving threads used 0.9-1.1 ms of
CPU a job at one and ten polling clients, about half that since (docs/benchmarks.md). A waiter
is subscribed, and its socket no longer QUIET, before it reads its row: a writer that found the
socket QUIET had committed before that, so the read sees the change.

Waking only hurries a waiter along: it still reads its row every FALLBACK_SECONDS, so a lost
datagram (a full buffer, a waiter in a container that cannot reach this one's sockets) costs
time, never an update. PostgreSQL's LISTEN/NOTIFY plays this part for the shared store
(api/postgres_listener.py), with the same Subscribers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

# How often a waiter reads its row even when nothing woke it.
FALLBACK_SECONDS = 1.0
# What a writer of this process may say it changed, for followers (api/status_docs.py): the
# progress or the running node (a queued job may have started), or only the place in the queue.
# Datagrams from other processes carry no such hint.
PROGRESS = "progress"
PLACE = "place"
# A job id (a UUID, or a test's short name) fits with room to spare.
MAX_KEY_BYTES = 200
# The keys one write changed go in as few datagrams as they fit, this many bytes each (a hundred
# job ids), one SEPARATOR between them (job ids never hold one).
MAX_DATAGRAM = 4096
SEPARATOR = "\n"
# On a socket's file: nothing in its process waits or follows now (the sticky bit: it means
# nothing on a socket, and changes nobody's access). Without it (a socket just bound, or a
# file system that refuses the mark), the socket is sent to, as it always was.
QUIET = stat.S_ISVTX
# sun_path holds 108 bytes; a longer path is reached through /proc/self/fd/<folder fd>.
MAX_SOCKET_PATH = 100
# A listing of the folder is reused while the folder's mtime is unchanged, if it was taken this
# long after that mtime: a socket bound within the same clock tick as the listing leaves the
# mtime as it was, and would otherwise never be sent to.
SETTLED_SECONDS = 1.0


class Subscribers:
    """Threads waiting on keys (job ids), each with an Event that wake() sets."""

    def __init__(self) -> None:
        self._events: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        # Called with the keys woken together (one write's, one datagram's; None: any key may
        # have changed) and what changed (None: unknown), for a follower of every job
        # (api/status_docs.py), after the waiters are woken; they must be brief (a status
        # file's write at most) and must not raise. Together, so that a run's end, which moves
        # the place of every job waiting behind it, is one read of their rows, not one each.
        self._followers: list[Callable[[list[str] | None, str | None], None]] = []
        # Called (under the lock, so in the order they happen) with True when something starts
        # to wait or follow here, False when nothing does any more.
        self.on_interest: Callable[[bool], None] | None = None
        self._interested = False

    def follow_all(self, callback: Callable[[list[str] | None, str | None], None]) -> None:
        with self._lock:
            self._followers.append(callback)
            self._interest()

    @contextmanager
    def subscribe(self, key: str) -> Iterator[threading.Event]:
        event = threading.Event()
        with self._lock:
            self._events.setdefault(key, set()).add(event)
            self._interest()
        try:
            yield event
        finally:
            with self._lock:
                events = self._events.get(key)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._events[key]
                self._interest()

    def _interest(self) -> None:
        """Tell on_interest when whether anything waits or follows here changed (under the
        lock)."""
        interested = bool(self._events or self._followers)
        if interested != self._interested and self.on_interest is not None:
            self.on_interest(interested)
        self._interested = interested

    def restate_interest(self) -> None:
        """Tell on_interest what holds now (a socket just bound starts unmarked)."""
        with self._lock:
            if self.on_interest is not None:
                self.on_interest(self._interested)

    def watched(self, key: str) -> bool:
        """Whether a thread waits on `key` now."""
        return key in self._events

    def wake(self, key: str | None, change: str | None = None) -> None:
        """Wake the waiters of `key`; of every key when None (something may have been missed).
        Then tell the followers, with `change`: what changed (PROGRESS, PLACE)."""
        self.wake_waiters(key)
        self.tell_followers(None if key is None else [key], change)

    def wake_waiters(self, key: str | None) -> None:
        with self._lock:
            if key is None:
                targets = [e for events in self._events.values() for e in events]
            else:
                targets = list(self._events.get(key, ()))
        for event in targets:
            event.set()

    def tell_followers(self, keys: list[str] | None, change: str | None = None) -> None:
        with self._lock:
            followers = list(self._followers)
        for callback in followers:
            callback(keys, change)


class Wakeup:
    """This process's socket in `folder` (bound when it first waits), and sending to all."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.subscribers = Subscribers()
        self._lock = threading.Lock()
        self._pid: int | None = None  # the process the socket below belongs to
        self._socket: socket.socket | None = None
        self._name: str | None = None
        self._sender: socket.socket | None = None
        self._prefix = os.fsdecode(self.folder) + os.sep
        # Socket names are 32 hex digits.
        self._short = len(os.fsencode(self._prefix)) + 32 <= MAX_SOCKET_PATH
        self._folder_fd: int | None = None
        self._fd_pid: int | None = None
        # The process that could not bind its socket: it says so once and its waiters fall back
        # to reading their rows (trying again on every wait would log on every request).
        self._failed_pid: int | None = None
        # The folder's sockets as last listed: (the folder's mtime, when listed, the names).
        self._listing: tuple[int, float, list[str]] | None = None
        self.subscribers.on_interest = self._mark
        self._mark_failed = False

    @contextmanager
    def subscribe(self, key: str) -> Iterator[threading.Event]:
        """An Event set when a writer in any process of this host announces `key`."""
        self._listening()
        with self.subscribers.subscribe(key) as event:
            yield event

    def follow_all(self, callback: Callable[[list[str] | None, str | None], None]) -> None:
        """Call `callback(keys, change)` with the keys any process announces from now on, those
        of one write (or one datagram) together (None when some may have been missed; `change`
        as this process's writer said, None from others); it runs on the thread that wakes the
        waiters (the receiving thread, or a writer of this process), after the waiters are
        woken, and must be brief."""
        self._listening()
        self.subscribers.follow_all(callback)

    def announce(self, key: str, change: str | None = None) -> None:
        """Tell every waiting process that `key` changed (after the change is committed);
        `change` (PROGRESS, PLACE) only when that is all the write can have changed."""
        self.announce_all([key], change)

    def announce_all(self, keys: list[str], change: str | None = None) -> None:
        """announce() for each of `keys` (one write changed them all), in as few datagrams as
        they fit: a run's end moves the place of every job waiting behind it."""
        # This process's own waiters directly: no datagram, no hop through the receiving
        # thread (the tracker and a submission waiting for its job often share a worker).
        for key in keys:
            self.subscribers.wake_waiters(key)
        self._send(keys)
        # The followers last: the waiters of other processes need not wait for a status file.
        self.subscribers.tell_followers(keys, change)

    def _send(self, keys: list[str]) -> None:
        try:
            names = self._sockets()
        except OSError:
            return  # nobody has waited here yet
        own = self._name if self._pid == os.getpid() else None
        sender = datagrams = None
        for name in names:
            if name == own:
                continue
            address = self._address(name)
            try:
                if os.stat(address).st_mode & QUIET:
                    continue  # nothing waits there now
            except OSError:
                continue  # gone meanwhile
            sender = sender or self._sending()
            datagrams = datagrams or list(_datagrams(keys))
            try:
                for data in datagrams:
                    sender.sendto(data, address)
            except (ConnectionRefusedError, FileNotFoundError):
                # Its process is gone (a dead socket refuses; nobody else uses that name).
                with contextlib.suppress(OSError):
                    os.unlink(self.folder / name)
            except OSError:
                pass  # a full buffer, or a socket this process may not reach: it falls back

    def close(self) -> None:
        with self._lock:
            if self._socket is not None and self._pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.unlink(self.folder / self._name)
                self._socket.close()
            self._socket = self._name = self._pid = None

    def _sockets(self) -> list[str]:
        """The names in the folder: a stat per announcement, a listing when it changed."""
        mtime = os.stat(self.folder).st_mtime_ns
        listing = self._listing
        if listing is not None and listing[0] == mtime:
            listed, names = listing[1], listing[2]
            if listed - mtime / 1e9 > SETTLED_SECONDS:
                return names
        listed = time.time()
        names = os.listdir(self.folder)
        self._listing = (mtime, listed, names)
        return names

    # --- this process's socket --------------------------------------------------------------

    def _address(self, name: str) -> str:
        if self._short:
            return self._prefix + name
        if self._folder_fd is None or self._fd_pid != os.getpid():
            self._folder_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            self._fd_pid = os.getpid()
        return f"/proc/self/fd/{self._folder_fd}/{name}"

    def _sending(self) -> socket.socket:
        sender = self._sender
        if sender is None:
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.setblocking(False)  # never hold a writer up: a waiter falls back instead
            self._sender = sender
        return sender

    def _listening(self) -> None:
        pid = os.getpid()
        if (self._socket is not None and self._pid == pid) or self._failed_pid == pid:
            return
        with self._lock:
            if (self._socket is not None and self._pid == pid) or self._failed_pid == pid:
                return
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._pid = os.getpid()
                name = uuid.uuid4().hex
                receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                receiver.bind(self._address(name))
            except OSError as exc:
                log.warning(
                    "no wake-ups in %s (%s): waiters read their rows instead", self.folder, exc
                )
                self._socket = None
                self._failed_pid = pid
                return
            self._socket, self._name = receiver, name
        self._prune()
        threading.Thread(target=self._receive, args=(receiver,), name="wakeup", daemon=True).start()
        self.subscribers.restate_interest()

    def _mark(self, interested: bool) -> None:
        """Mark this process's socket QUIET when nothing here waits or follows, unmark it when
        something does (Subscribers' on_interest, under its lock)."""
        if self._socket is None or self._pid != os.getpid():
            return  # not bound (yet, or could not be): restate_interest marks it once it is
        path = self._address(self._name)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            os.chmod(path, mode & ~QUIET if interested else mode | QUIET)
        except OSError as exc:
            # Unmarked, it is sent to as before (woken for nothing at worst): said once.
            if not self._mark_failed:
                self._mark_failed = True
                log.warning("wake-ups: cannot mark %s (%s); it is sent every change", path, exc)

    def _prune(self) -> None:
        """Remove the sockets of processes that are gone: a writer skips a QUIET socket, so a
        process that died with nothing waiting would never be found by a refused send."""
        own = self._name
        try:
            with os.scandir(self.folder) as entries:
                names = [entry.name for entry in entries]
        except OSError:
            return  # only tidiness is lost
        for name in names:
            if name == own:
                continue
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                probe.connect(self._address(name))
            except ConnectionRefusedError:
                with contextlib.suppress(OSError):
                    os.unlink(self.folder / name)
            except OSError:
                pass
            finally:
                probe.close()

    def _receive(self, receiver: socket.socket) -> None:
        while True:
            try:
                data = receiver.recv(MAX_DATAGRAM)
            except OSError:
                return  # closed
            keys = data.decode(errors="replace").split(SEPARATOR)
            for key in keys:
                self.subscribers.wake_waiters(key)
            self.subscribers.tell_followers(keys)


def _datagrams(keys: list[str]) -> Iterator[bytes]:
    """The keys, each cut to MAX_KEY_BYTES, one SEPARATOR between them, at most MAX_DATAGRAM
    bytes a datagram."""
    batch, size = [], 0
    for key in keys:
        data = key.encode()[:MAX_KEY_BYTES]
        if batch and size + 1 + len(data) > MAX_DATAGRAM:
            yield SEPARATOR.encode().join(batch)
            batch, size = [], 0
        size += len(data) + (1 if batch else 0)
        batch.append(data)
    if batch:
        yield SEPARATOR.encode().join(batch)
