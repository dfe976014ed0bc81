"""The gunicorn worker (api/gunicorn_worker.py): an idle main loop that wakes every IDLE_TICK
seconds while the worker runs, gunicorn's own waits while it stops."""

import inspect
import selectors

from gunicorn.workers.gthread import ThreadWorker

from api import gunicorn_worker
from api.gunicorn_worker import QuietThreadWorker
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
    assert running.poller.waits == [gunicorn_worker.IDLE_TICK]
    stopping = worker(alive=False)
    stopping.wait_for_and_dispatch_events(timeout=1.0)
    stopping.wait_for_and_dispatch_events(timeout=0.2)  # until a kept-alive connection expires
    assert stopping.poller.waits == [1.0, 0.2]


def test_gunicorns_loop_still_waits_a_second_through_the_method_this_replaces():
    # A gunicorn that named its wait otherwise would tick every second again, silently.
    assert "wait_for_and_dispatch_events(timeout=1.0)" in inspect.getsource(ThreadWorker.run)
    # And SIGTERM still wakes the loop at once (not after IDLE_TICK).
    assert "method_queue.defer" in inspect.getsource(ThreadWorker.handle_exit)


def test_the_shipped_configuration_uses_it():
    assert (
        'worker_class = "api.gunicorn_worker.QuietThreadWorker"'
        in (REPO / "gunicorn.conf.py").read_text()
    )
