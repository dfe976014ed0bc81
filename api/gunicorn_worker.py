"""gunicorn's threaded worker, with an idle main loop that wakes every few seconds, not every one.

gunicorn's gthread worker wakes its main thread every second, busy or not, to beat its heartbeat
and close kept-alive connections that have idled out. On a host where a thread woken on an idle
CPU costs ~0.2 ms of CPU whatever it then does (measured on the benchmark machine: more than a
status file or a reconciliation pass), two workers' ticks were ~2 ms of every polled job's
share of the sidecar (docs/benchmarks.md). Everything the loop waits for wakes it anyway: a
connection or request (the selector), a finished request (gunicorn's method queue), SIGTERM
(gunicorn defers a no-op on that queue to wake it). What waits for the tick is only what can
wait a few seconds: the heartbeat (GUNICORN_TIMEOUT is 120 s), idle kept-alive connections
closed after `keepalive` plus up to IDLE_TICK (nginx closes its side first anyway: its upstream
keepalive_timeout is below gunicorn's), and noticing that the master is gone.
"""

from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker

# How long the main loop of a running worker sleeps when nothing happens (gunicorn: 1 s).
IDLE_TICK = 5.0


class QuietThreadWorker(ThreadWorker):
    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # While the worker runs, gunicorn's loop always waits a whole second; the shorter
        # waits of a graceful stop (until the next kept-alive connection expires) stay as
        # they are.
        if self.alive and timeout >= 1.0:
            timeout = IDLE_TICK
        super().wait_for_and_dispatch_events(timeout)
