"""gunicorn's master and workers when idle (api/gunicorn_idle.py): loops that wait IDLE_TICK
while they run, gunicorn's own waits while a worker stops, and signals that still wake them."""

import inspect
import os
import queue
import selectors
import signal
import threading
import time

from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker

from api import gunicorn_idle
from api.gunicorn_idle import QuietThreadWorker, quiet_master
from tests.unit.test_config import REPO


class Poller:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def select(self, timeout: float) -> list[tuple[selectors.SelectorKey, int]]:
        self.waits.append(timeout)
        return []


def worker(alive: bool) -> QuietThreadWorker:
    # Only what the loop's wait reads: building a real worker needs a master.
    w = QuietThreadWorker.__new__(QuietThreadWorker)
    w.alive, w.poller = alive, Poller()
    return w


def test_a_running_worker_waits_idle_ticks_and_a_stopping_one_gunicorns_waits():
    running = worker(alive=True)
    running.wait_for_and_dispatch_events(timeout=1.0)
    assert running.poller.waits == [gunicorn_idle.IDLE_TICK]
    stopping = worker(alive=False)
    stopping.wait_for_and_dispatch_events(timeout=1.0)
    stopping.wait_for_and_dispatch_events(timeout=0.2)  # until a kept-alive connection expires
    assert stopping.poller.waits == [1.0, 0.2]


def test_the_master_waits_idle_ticks_and_a_signal_still_wakes_it_at_once(monkeypatch):
    arbiter = Arbiter.__new__(Arbiter)  # only what its wait reads
    waits = []
    arbiter.wait_for_signals = lambda timeout=1.0: waits.append(timeout) or []
    quiet_master(arbiter)
    assert arbiter.wait_for_signals(timeout=1.0) == [] and waits == [gunicorn_idle.IDLE_TICK]
    # A signal the master handles (its handler queues it) ends the wait long before the tick.
    monkeypatch.setattr(gunicorn_idle, "IDLE_TICK", 60.0)
    arbiter = Arbiter.__new__(Arbiter)
    arbiter.SIG_QUEUE = queue.SimpleQueue()
    quiet_master(arbiter)
    previous = signal.signal(signal.SIGUSR1, lambda sig, frame: arbiter.SIG_QUEUE.put(sig))
    try:
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        started = time.monotonic()
        assert arbiter.wait_for_signals(timeout=1.0) == [signal.SIGUSR1]
        assert time.monotonic() - started < 30
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_gunicorns_loops_still_wait_a_second_through_the_methods_this_replaces():
    # A gunicorn that named its waits otherwise would tick every second again, silently.
    assert "wait_for_and_dispatch_events(timeout=1.0)" in inspect.getsource(ThreadWorker.run)
    assert "self.wait_for_signals(timeout=1.0)" in inspect.getsource(Arbiter.run)
    # And SIGTERM still wakes a worker's loop at once (not after IDLE_TICK).
    assert "method_queue.defer" in inspect.getsource(ThreadWorker.handle_exit)


def test_the_shipped_configuration_uses_them():
    source = (REPO / "gunicorn.conf.py").read_text()
    assert 'worker_class = "api.gunicorn_idle.QuietThreadWorker"' in source
    assert "quiet_master(server)" in source
