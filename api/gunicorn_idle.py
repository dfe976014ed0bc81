"""gunicorn's master and threaded workers, waking every few seconds when idle, not every second.

gunicorn's master and each gthread worker's main thread wake every second, busy or not: the master
to look after its workers, a worker to beat its heartbeat and close kept-alive connections that have
idled out. On a host where a thread woken on an idle CPU costs ~0.2 ms of CPU whatever it then does
(measured on the benchmark machine: about half of what a status file costs with the read of its
row), those three ticks were ~3 ms of every polled job's share of the sidecar (docs/benchmarks.md).
Everything they wait for wakes them anyway: a worker's connections and requests (its selector), its
finished requests (gunicorn's method queue), SIGTERM (gunicorn defers a no-op on that queue); the
master's signals (a worker's exit, SIGTERM, SIGHUP) reach its signal queue at once. What waits for
the tick is only what can wait a few seconds: the heartbeat and the master's look for a worker
silent for GUNICORN_TIMEOUT (120 s), idle kept-alive connections closed after `keepalive` plus up to
IDLE_TICK (nginx closes its side first anyway: its upstream keepalive_timeout is below gunicorn's),
and noticing that the master is gone.

Its workers also end the app's waits as SIGTERM begins their graceful stop (handle_exit).

Imported by gunicorn's master (gunicorn.conf.py): gunicorn only.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.gthread import ThreadWorker

# How long the master and a running worker's main loop sleep when nothing happens (gunicorn: 1 s).
IDLE_TICK = 5.0


class QuietThreadWorker(ThreadWorker):
    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: gunicorn's graceful stop, which waits up to graceful_timeout for the
        requests in flight, then kills them. A long poll, a submission waiting with `?wait=` or
        an event stream would hold it to the end and be cut off (docker's own stop kills
        after 10 s); their waits end now instead, and each answers with what it has
        (JobStore.stop_waits). Done by the main loop, not in the signal handler."""
        stopping = self.alive
        super().handle_exit(sig, frame)
        if stopping:
            self.method_queue.defer(self._stop_waits)

    def _stop_waits(self) -> None:
        sidecar = sidecar_of(self)
        if sidecar is not None:
            sidecar.store.stop_waits()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # While the worker runs, gunicorn's loop always waits a whole second; the shorter
        # waits of a graceful stop (until the next kept-alive connection expires) stay as
        # they are.
        if self.alive and timeout >= 1.0:
            timeout = IDLE_TICK
        super().wait_for_and_dispatch_events(timeout)


def quiet_master(arbiter: Any) -> None:
    """Make the master's loop wait IDLE_TICK for a signal instead of a second (gunicorn's
    on_starting hook, given the Arbiter). A gunicorn without that wait is left as it is."""
    wait = getattr(arbiter, "wait_for_signals", None)
    if wait is None:
        return

    def wait_for_signals(timeout: float = 1.0) -> list[int]:
        return wait(timeout=max(timeout, IDLE_TICK))

    arbiter.wait_for_signals = wait_for_signals


def sidecar_of(worker: Any) -> Any:
    """The Sidecar of the app a worker has loaded (None before it has, or if loading failed)."""
    return getattr(getattr(worker, "wsgi", None), "extensions", {}).get("sidecar")
