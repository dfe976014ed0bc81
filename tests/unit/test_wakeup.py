"""Waking waiters across processes through Unix datagram sockets (api/wakeup.py)."""

import contextlib
import logging
import os
import socket
import threading
import time

from api import wakeup
from api.wakeup import PLACE, Wakeup

real_time = time.time


def test_an_announcement_wakes_the_waiters_of_that_key_only(tmp_path):
    waiter, writer = Wakeup(tmp_path / "wake"), Wakeup(tmp_path / "wake")
    with waiter.subscribe("j1") as j1, waiter.subscribe("j2") as j2:
        writer.announce("j1")
        assert j1.wait(10)
        assert not j2.is_set()
    waiter.close()


def test_a_folder_it_cannot_use_is_said_once_and_waiters_still_wait(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    wakeup = Wakeup(blocker / "wake")
    with caplog.at_level(logging.WARNING, logger="api.wakeup"):
        for _ in range(3):
            with wakeup.subscribe("j1") as event:
                assert not event.wait(0.01)
        wakeup.announce("j1")  # nobody can hear it: no error either
    assert [r.getMessage().startswith("no wake-ups in") for r in caplog.records] == [True]


def test_a_waiter_in_the_writing_process_is_woken_by_the_write_itself(tmp_path, monkeypatch):
    wakeup, other = Wakeup(tmp_path / "wake"), Wakeup(tmp_path / "wake")
    sent = []

    class Recorder:
        def sendto(self, data, address):
            sent.append(address)

    monkeypatch.setattr(wakeup, "_sending", lambda: Recorder())
    with other.subscribe("j9"), wakeup.subscribe("j1") as event:
        wakeup.announce("j1")
        assert event.is_set()  # set before announce returned: no receiving thread involved
        # The other process's socket still gets its datagram; this process's own does not.
        assert [address.rsplit("/", 1)[-1] for address in sent] == [other._name]
    wakeup.close()
    other.close()


def test_followers_are_told_after_every_waiter_is_woken(tmp_path, monkeypatch):
    # A follower may write a status file: the waiters here and in other processes go first.
    wakeup, other = Wakeup(tmp_path / "wake"), Wakeup(tmp_path / "wake")
    told, sent = [], []

    class Recorder:
        def sendto(self, data, address):
            sent.append(address)

    monkeypatch.setattr(wakeup, "_sending", lambda: Recorder())
    with other.subscribe("j1"), wakeup.subscribe("j1") as event:
        wakeup.follow_all(lambda keys, how: told.append((keys, how, event.is_set(), len(sent))))
        wakeup.announce("j1", PLACE)
    assert told == [(["j1"], PLACE, True, 1)]
    wakeup.close()
    other.close()


def test_a_socket_bound_after_the_folder_was_listed_is_sent_to(tmp_path, monkeypatch):
    folder = tmp_path / "wake"
    writer, first, second = Wakeup(folder), Wakeup(folder), Wakeup(folder)
    listings = []
    real = os.listdir
    monkeypatch.setattr(wakeup.os, "listdir", lambda path: listings.append(path) or real(path))
    with first.subscribe("j1") as one:
        writer.announce("j1")
        assert one.wait(10)
        # Bound within the same clock tick as that listing, maybe: the folder's mtime may not
        # have moved, and the listing is not trusted so soon after it did.
        with second.subscribe("j1") as two:
            writer.announce("j1")
            assert two.wait(10)
    assert len(listings) == 2
    # A listing taken well after the folder last changed is reused while its mtime holds.
    writer._listing = None
    monkeypatch.setattr(wakeup.time, "time", lambda: real_time() + 2 * wakeup.SETTLED_SECONDS)
    with first.subscribe("j2") as one:
        writer.announce("j2")
        writer.announce("j2")
        assert one.wait(10)
    assert len(listings) == 3
    first.close()
    second.close()


def test_the_keys_of_one_write_go_out_together_and_wake_each_waiter(tmp_path, monkeypatch):
    writer, waiter = Wakeup(tmp_path / "wake"), Wakeup(tmp_path / "wake")
    keys = [f"{n:032x}" for n in range(250)]  # a run's end moving 250 waiting jobs' places
    sent = []
    real = writer._sending()

    class Counting:
        def sendto(self, data, address):
            sent.append(len(data))
            return real.sendto(data, address)

    monkeypatch.setattr(writer, "_sending", lambda: Counting())
    # Followers hear of one write's keys together (a status file's writer reads their rows at
    # once): in the writing process one call, in another one a datagram.
    told_here, told_there, all_there = [], [], threading.Event()

    def there(got, change):
        told_there.append((len(got), change))
        if sum(n for n, _ in told_there) == len(keys):
            all_there.set()

    writer.follow_all(lambda got, change: told_here.append((list(got), change)))
    waiter.follow_all(there)
    with contextlib.ExitStack() as stack:
        events = [stack.enter_context(waiter.subscribe(key)) for key in keys]
        writer.announce_all(keys, PLACE)
        assert all(event.wait(10) for event in events)
    assert len(sent) == 3 and max(sent) <= wakeup.MAX_DATAGRAM  # 33 bytes a key, 124 a datagram
    assert told_here == [(keys, PLACE)]
    assert all_there.wait(10)
    assert told_there == [(124, None), (124, None), (2, None)]
    writer.close()
    waiter.close()


def test_a_process_is_sent_to_only_while_something_there_waits_or_follows(tmp_path, monkeypatch):
    writer, other = Wakeup(tmp_path / "wake"), Wakeup(tmp_path / "wake")
    sent = []
    real = writer._sending()

    class Counting:
        def sendto(self, data, address):
            sent.append(address.rsplit("/", 1)[-1])
            return real.sendto(data, address)

    monkeypatch.setattr(writer, "_sending", lambda: Counting())
    with other.subscribe("j0"):
        pass  # bound, and nothing waits there any more
    writer.announce("j1")
    assert sent == []
    with other.subscribe("j1") as event:
        writer.announce("j1")
        assert event.wait(10)
    assert sent == [other._name]
    writer.announce("j1")
    assert sent == [other._name]
    told = []
    other.follow_all(lambda keys, change: told.extend(keys))
    writer.announce("j2")
    assert sent == [other._name, other._name]
    deadline = time.monotonic() + 10
    while not told and time.monotonic() < deadline:
        time.sleep(0.01)
    assert told == ["j2"]
    writer.close()
    other.close()


def test_the_socket_of_a_process_that_is_gone_is_removed_when_another_binds(tmp_path):
    folder = tmp_path / "wake"
    folder.mkdir()
    name = "0" * 32
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(folder / name))
    dead.close()  # as in a process that died: its file stays, nothing receives
    alive = Wakeup(folder)
    with alive.subscribe("j1"):
        assert not (folder / name).exists()
    alive.close()


def test_a_socket_that_cannot_be_marked_is_sent_every_change(tmp_path, monkeypatch, caplog):
    writer, other = Wakeup(tmp_path / "wake"), Wakeup(tmp_path / "wake")
    sent = []

    class Recorder:
        def sendto(self, data, address):
            sent.append(address.rsplit("/", 1)[-1])

    def refused(*_):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(wakeup.os, "chmod", refused)
    monkeypatch.setattr(writer, "_sending", lambda: Recorder())
    with caplog.at_level(logging.WARNING, logger="api.wakeup"):
        for _ in range(2):
            with other.subscribe("j0"):
                pass  # nothing waits there now, but it could not say so
    writer.announce("j1")
    assert sent == [other._name]
    assert [r.getMessage().startswith("wake-ups: cannot mark") for r in caplog.records] == [True]
    writer.close()
    other.close()
