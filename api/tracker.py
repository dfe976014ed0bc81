"""The job tracker: follows every submitted job until it is completed, failed or cancelled.

Exactly one tracker runs per deployment (per state directory): every gunicorn worker starts a
candidate thread, and the one that takes an exclusive flock on <state_dir>/tracker.lock runs it.
The kernel drops the lock when that process dies, and another worker's candidate, waiting in
flock, takes over at that moment. One tracker means one WebSocket to ComfyUI and one writer of job
progress, instead of N workers racing to settle the same job.

Two sources feed it:
  - the WebSocket (fast): progress, start, errors, and `executing {node: null}`, the "done" signal;
  - reconciliation (sure): every RECONCILE_INTERVAL, each unfinished job is checked against
    /queue and /history/<prompt_id>. ComfyUI does not buffer or replay events, so a job must be
    able to finish even if every WebSocket message about it was lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import websocket

from api import comfyui, rejections
from api.config import Config
from api.exceptions import ComfyUIError, StoreUnavailable
from api.job import JobStatus
from api.jobstore import JobStore
from api.outcome import Finisher, RunSeen, settle_from_events
from api.reconciler import Reconciler

if TYPE_CHECKING:
    from api.fleet import Fleet
    from api.status_docs import StatusDocs

log = logging.getLogger(__name__)

ELECTION_RETRY = 3.0  # after a failed attempt to wait for the lock (not a lock held elsewhere)
WS_IDLE_PING = 15.0  # ComfyUI sends no pings; we ping it to find silently dead sockets.
WS_DEAD_AFTER = 40.0  # no frame at all (not even a pong) for this long: reconnect.
WS_MAX_BACKOFF = 30.0
MIN_RECONCILE_GAP = 0.25
# A pass asked for by a `status` event (ComfyUI's queue changed) waits at least this long after
# the one before: queue positions stay fresh to the second, without reading ComfyUI's whole
# /queue for every job that is added, started or finished during a burst.
QUEUE_REFRESH_GAP = 1.0
# With many prompts waiting the gap is longer, this much per prompt ComfyUI's last `status`
# event counted, up to RECONCILE_INTERVAL: each pass then reads and places every unfinished
# job (5.8 ms a pass with a hundred waiting, under a profiler: 2.4 ms the rows, ~2 ms the
# status files of the places that moved), and two `status` events come with each run (its
# end, and the next submission): with a hundred clients polling, a pass a second was about
# half of gunicorn's CPU a job. A place is then at most about one run behind.
QUEUE_REFRESH_PER_PROMPT = 0.02
PURGE_EVERY = 3600.0
# A run's progress and running node are written at most this often (seconds): a step or node
# that comes sooner is held and written with the first step or node that comes after the gap
# (the socket's thread is awake for it anyway; a timer wakes it only when none comes within
# another gap), or before the next event that writes the job (a newer node replaces a held one;
# a run's last node is written with its end); a node's first and last steps at once. Each
# write is a transaction and wakes every watcher of the job: at a GPU's pace of several steps a
# second that was most of what the sidecar cost a run. A second (was half a second: two writes
# more per 2 s run of 8 steps) is as often as a plain poll's status file changes.
PROGRESS_GAP = 1.0
# A run can end before its job records the prompt_id ComfyUI gave it: servers before 2026 ignore
# the id the sidecar asks for, and a job of a few milliseconds is done before the answer to
# POST /prompt is committed. Its end is looked for again after these delays (seconds), then
# left to the reconciliation (which would take RECONCILE_INTERVAL or two).
LATE_SETTLE_DELAYS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5)
# The events whose handling writes a job's row: what PROGRESS_GAP holds is written before them,
# in the order ComfyUI sent it. Others (executed, execution_cached, status...) write nothing.
WRITING_EVENTS = frozenset({"execution_start", "execution_error", "execution_interrupted"})


class Tracker:
    """Elects itself, then runs the WebSocket listener and the reconciler threads."""

    def __init__(
        self,
        config: Config,
        store: JobStore,
        client: comfyui.ComfyUIClient,
        client_id: str,
        finisher: Finisher | None = None,
        on_progress: Callable[[str], None] | None = None,
        metrics: Any = None,
        idle: Any = None,
        fleet: Fleet | None = None,
        status_docs: StatusDocs | None = None,
    ) -> None:
        self.config = config
        self.status_docs = status_docs  # written by the elected process (api/status_docs.py)
        self.store = store
        self.client = client
        self.client_id = client_id
        self.finisher = finisher or Finisher(store)
        self.on_progress = on_progress  # a job's progress moved (by prompt_id): job.progress
        self.metrics = metrics
        self.idle = idle  # api.idle.IdleUnloader, checked after each reconciliation
        self.fleet = fleet
        self.reconciler = Reconciler(config, store, client, client_id, self.finisher, fleet)
        self.starts = self.reconciler.starts  # filled by the socket, read by the passes too
        self.lock_path = Path(config.state_dir) / "tracker.lock"
        self._stop = threading.Event()
        self._lock_file = None
        self._threads: list[threading.Thread] = []
        self._ws: websocket.WebSocket | None = None
        self._ws_connected = False
        self._comfyui_reachable: bool | None = None
        self._running_prompt: str | None = None  # for old servers' events without prompt_id
        # The run this connection has followed from its execution_start (ComfyUI runs one
        # prompt at a time): when its events cover it whole, it is settled without /history.
        self._run: RunSeen | None = None
        self._reconcile_now = threading.Event()
        self._connections = 0  # WebSocket connections made so far
        self._last_frame = 0.0  # when the socket last brought anything (a pong included)
        self._catch_up = threading.Event()  # a (re)connection: reconcile everything at once
        # How many prompts ComfyUI's last `status` event said it holds (None: not known).
        self._queue_remaining: int | None = None
        # What PROGRESS_GAP holds back: "node": (prompt_id, node), "progress": (prompt_id,
        # value, max, node); and the last write of a run's state: (prompt_id, when, monotonic).
        self._held: dict[str, tuple] = {}
        self._progress_written: tuple[str | None, float] = (None, 0.0)
        self.leader = False
        self._beat: tuple[dict | None, float] = (None, 0.0)  # the last heartbeat, and when

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        # Not joined by stop(): a candidate waits in flock until the elected process exits, and
        # then gives the lock back at once (the process is stopping, or gone).
        threading.Thread(target=self._elect, name="tracker-election", daemon=True).start()

    def stop(self) -> None:
        """Stop every thread and give up the lock (worker exit); safe to call twice."""
        self._stop.set()
        self._reconcile_now.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close(timeout=1)
        for thread in self._threads:
            thread.join(timeout=5)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _try_lock(self, wait: bool = False) -> bool:
        """Take the tracker lock; with `wait`, wait for it while another process holds it (no
        CPU spent, and no delay when that process exits: the kernel wakes this one)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            handle.close()
            return False
        if self._stop.is_set():  # stopped while it waited
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle
        return True

    def _elect(self) -> None:
        while not self._stop.is_set():
            if self._try_lock(wait=True):
                self.leader = True
                log.info("tracker elected in pid %s (client_id %s)", os.getpid(), self.client_id)
                loops = [(self._ws_loop, "tracker-ws"), (self._reconcile_loop, "tracker-reconcile")]
                if self.fleet is not None:
                    # In a cluster the same process claims work and keeps this node's leases.
                    loops += [
                        (lambda: self.fleet.run_heartbeat(self._stop), "fleet-heartbeat"),
                        (lambda: self.fleet.run_dispatcher(self._stop), "fleet-dispatch"),
                    ]
                if self.status_docs is not None:
                    loops.append((lambda: self.status_docs.run(self._stop), "status-docs"))
                for target, name in loops:
                    thread = threading.Thread(target=target, name=name, daemon=True)
                    thread.start()
                    self._threads.append(thread)
                return
            self._stop.wait(ELECTION_RETRY)

    # --- WebSocket ------------------------------------------------------------------------

    def _ws_loop(self) -> None:
        if self.status_docs is not None:
            # This thread reads ComfyUI's events as they come: the files of what it writes are
            # the status files' own thread's to write.
            self.status_docs.hand_off()
        backoff = 0.5
        url = self.client.ws_url(self.client_id)
        while not self._stop.is_set():
            try:
                # json.loads checks the text anyway; websocket-client's own UTF-8 check is
                # pure Python and cost more than handling the event.
                ws = websocket.create_connection(
                    url,
                    timeout=self.config.comfyui_connect_timeout,
                    enable_multithread=True,
                    skip_utf8_validation=True,
                )
            except Exception as exc:
                if isinstance(exc, OSError | websocket.WebSocketTimeoutException):
                    self._reachable(False, exc)  # refused, or no answer: not an HTTP error
                self._set_ws(False)
                log.debug("websocket connect to %s failed: %s", url, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, WS_MAX_BACKOFF)
                continue
            backoff = 0.5
            self._ws = ws
            self._run = None  # a run begun before this connection was not seen whole
            self._connections += 1
            self._reachable(True)
            self._set_ws(True)
            if self.metrics is not None:
                self.metrics.websocket_connects.inc()
            log.info("websocket connected to %s", url)
            # Events sent while we were away are gone for good: look at every job now.
            self._catch_up.set()
            self._reconcile_now.set()
            try:
                self._read(ws)
            except Exception as exc:
                if self._stop.is_set():  # stop() closed it: a worker's orderly exit or reload
                    log.debug("websocket to ComfyUI closed as the tracker stops: %s", exc)
                else:
                    log.warning("websocket to ComfyUI lost: %s", exc)
            finally:
                self._ws = None
                self._set_ws(False)
                with contextlib.suppress(Exception):
                    ws.close(timeout=1)

    def _read(self, ws: websocket.WebSocket) -> None:
        # While jobs are unfinished, a quiet socket is pinged twice per RECONCILE_INTERVAL: its
        # pong proves to the reconciler that events still flow (a silently dead socket brings
        # nothing). With none, every WS_IDLE_PING is enough: the next job's submission makes
        # ComfyUI send a `status` frame, and the pass it triggers finds the job.
        watching = min(WS_IDLE_PING, self.config.reconcile_interval / 2)
        timeout = None
        self._last_frame = time.monotonic()
        try:
            while not self._stop.is_set():
                wanted = watching if self.reconciler.watching else WS_IDLE_PING
                # What is held is written with the next step after its gap; the timer only
                # for a run that goes quiet.
                held_for = self._progress_due_in(late=PROGRESS_GAP)
                if held_for is not None:
                    wanted = min(wanted, max(held_for, 0.001))
                if wanted != timeout:
                    ws.settimeout(wanted)
                    timeout = wanted
                try:
                    opcode, frame = ws.recv_data_frame(True)
                except websocket.WebSocketTimeoutException:
                    if held_for is not None and self._progress_due_in() == 0:
                        self._write_held()  # steps arrived just now: no ping needed
                        continue
                    if time.monotonic() - self._last_frame > WS_DEAD_AFTER:
                        raise ConnectionError("no frame from ComfyUI, not even a pong") from None
                    ws.ping()
                    continue
                self._frame(opcode, frame)
        finally:
            self._write_held()

    def _frame(self, opcode: int, frame: Any) -> None:
        self._last_frame = time.monotonic()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise ConnectionError("ComfyUI closed the websocket")
        if opcode != websocket.ABNF.OPCODE_TEXT:
            return  # binary previews and pongs carry nothing the job state needs
        try:
            message = json.loads(frame.data)
            self.handle_event(message.get("type"), message.get("data") or {})
        except Exception:
            log.exception("could not handle websocket message %r", frame.data[:200])

    def _set_ws(self, connected: bool) -> None:
        if connected != self._ws_connected:
            self._ws_connected = connected
            self._heartbeat()

    def handle_event(self, kind: str | None, data: dict) -> None:
        """Turn one ComfyUI event into job state."""
        prompt_id = data.get("prompt_id")
        if self._held and kind in WRITING_EVENTS:
            self._write_held()  # in the order ComfyUI sent them
        if kind == "status":
            # ComfyUI's queue changed (a prompt was added, started or finished): refresh queue
            # positions soon rather than at the next interval (unless it says none can move).
            remaining = ((data.get("status") or {}).get("exec_info") or {}).get("queue_remaining")
            self._queue_remaining = remaining if isinstance(remaining, int) else None
            self._reconcile_now.set()
        elif kind == "execution_start":
            self._running_prompt = prompt_id
            self._run = None
            if prompt_id:
                self._run = RunSeen(prompt_id)
                self.starts.saw(prompt_id)
            self.store.mark_processing(prompt_id)
            # The run's first node comes right after: held like any, mostly written with the
            # node's first step.
            self._progress_written = (prompt_id, time.monotonic())
        elif kind == "execution_cached":
            run = self._run_of(prompt_id)
            if run is not None:
                run.cached = [str(node) for node in data.get("nodes") or []]
        elif kind == "executed":
            run = self._run_of(prompt_id)
            if run is not None and isinstance(data.get("output"), dict):
                run.outputs[str(data.get("node"))] = data["output"]
        elif kind == "executing":
            prompt_id = prompt_id or self._running_prompt
            if prompt_id is None:
                return
            if data.get("node") is None:
                # The "done" signal: sent after ComfyUI wrote the history entry.
                self._running_prompt = None
                run = self._run_of(prompt_id)
                held = self._held.get("node")
                if run is not None and len(self._held) == 1 and held and held[0] == prompt_id:
                    # Only the run's last node is held: recorded with the job's end.
                    run.last_node = self._held.pop("node")[1]
                self._write_held()
                try:
                    self._settle(prompt_id, run)
                finally:
                    # Followed until its job is settled: a pass meanwhile (asked for by the
                    # `status` event that came just before) sees whose run is ending.
                    self._run = None
            else:
                self._running_prompt = prompt_id
                # A held node is replaced, held steps (of the node before) written first.
                self._held.pop("node", None)
                self._write_held()
                self._hold_or_write("node", (prompt_id, str(data["node"])), now=False)
        elif kind == "progress":
            prompt_id = prompt_id or self._running_prompt
            if prompt_id is not None:
                value, maximum = int(data.get("value", 0)), int(data.get("max", 0))
                step = (prompt_id, value, maximum, data.get("node"))
                # A node's first step and its last: at once (it started; it is done).
                self._hold_or_write("progress", step, now=value <= 1 or value >= maximum)
        elif kind in ("execution_error", "execution_interrupted"):
            run = self._run_of(prompt_id)
            if run is not None:
                run.ended_badly = True  # its end comes from /history if this write fails
            job = self.store.find_by_prompt(prompt_id) if prompt_id else None
            if job is not None:
                if kind == "execution_error":
                    status, error = JobStatus.FAILED, rejections.execution_error_message(data)
                else:
                    status, error = JobStatus.CANCELLED, "Cancelled: interrupted in ComfyUI"
                self.finisher.finish(
                    job,
                    status,
                    error=error,
                    error_details=data,
                    prompt_id=prompt_id,
                    ran_for=self.starts.ran_for(prompt_id),
                )

    def _hold_or_write(self, kind: str, item: tuple, now: bool) -> None:
        """Hold a run's node or step (`kind`) if its last write was less than PROGRESS_GAP ago
        (unless `now`), else write it with whatever is held."""
        self._held[kind] = item
        last_prompt, last_at = self._progress_written
        if not now and item[0] == last_prompt and time.monotonic() - last_at < PROGRESS_GAP:
            return
        self._write_held()

    def _progress_due_in(self, late: float = 0.0) -> float | None:
        """Seconds until what is held is due (0: now), plus `late`; None when nothing is."""
        if not self._held:
            return None
        return max(0.0, self._progress_written[1] + PROGRESS_GAP + late - time.monotonic())

    def _write_held(self) -> None:
        """Write the held node and step: one write when both are held (the step is the newer,
        and its own node, when it names one, the current one), else the one held."""
        held, self._held = self._held, {}
        node, step = held.get("node"), held.get("progress")
        if step is not None and node is not None and node[0] == step[0] and step[2] > 0:
            prompt_id, value, maximum, step_node = step
            step, node = (prompt_id, value, maximum, step_node or node[1]), None
        try:
            if node is not None:
                self._progress_written = (node[0], time.monotonic())
                self.store.mark_processing(*node)
            if step is not None:
                self._progress_written = (step[0], time.monotonic())
                if self.store.record_progress(*step) and self.on_progress is not None:
                    self.on_progress(step[0])
        except Exception:
            log.exception("could not record the progress of a run")

    def _settle(
        self, prompt_id: str, run: RunSeen | None, delays: tuple[float, ...] = LATE_SETTLE_DELAYS
    ) -> None:
        """Finish the job of a run that has ended: from its events when they cover it (`run`),
        else from /history; when no job has its prompt_id yet, again after each of `delays`."""
        if run is not None:
            settled = settle_from_events(
                self.finisher, self.client, run, self.starts.ran_for(prompt_id)
            )
        else:
            settled = self.settle_from_history(prompt_id)
        if settled or not delays or self._stop.is_set():
            return
        job = self.store.find_by_prompt(prompt_id)
        if job is not None:
            if not job.finished:
                # Its prompt was recorded between the attempt and this look (the answer to its
                # POST /prompt came meanwhile; on PostgreSQL often): once more, at once. Found
                # the first time too, /history has no entry: the reconciliation's part.
                self._settle(prompt_id, run, ())
            return
        timer = threading.Timer(delays[0], self._settle_late, args=(prompt_id, run, delays[1:]))
        timer.daemon = True
        timer.start()

    def _settle_late(self, prompt_id: str, run: RunSeen | None, delays: tuple[float, ...]):
        try:
            self._settle(prompt_id, run, delays)
        except Exception:
            log.exception("settling prompt %s failed; the reconciliation will", prompt_id)

    def _run_of(self, prompt_id: str | None) -> RunSeen | None:
        """The followed run, if the event (or, without a prompt_id, the running prompt) is
        about it."""
        run = self._run
        wanted = prompt_id or self._running_prompt
        return run if run is not None and run.prompt_id == wanted else None

    # --- reconciliation -------------------------------------------------------------------

    def settle_from_history(self, prompt_id: str) -> bool:
        return self.reconciler.settle_from_history(prompt_id)

    def reconcile_once(self) -> None:
        self.reconciler.reconcile_once()

    def _reconcile_loop(self) -> None:
        last_purge = 0.0
        connection_before = None  # the connection up during the previous pass
        woken = False  # this pass was asked for by a `status` event
        while not self._stop.is_set():
            started = time.monotonic()
            if time.monotonic() - last_purge > PURGE_EVERY:
                last_purge = time.monotonic()
                try:
                    self.reconciler.purge_old_jobs()
                except Exception:
                    log.exception("purging old jobs failed")
            connection = self._connections if self._ws_connected else None
            try:
                # The first pass after a (re)connection catches up on everything at once.
                flowing = (
                    connection is not None
                    and connection == connection_before
                    and not self._catch_up.is_set()
                    and started - self._last_frame < self.config.reconcile_interval
                )
                connection_before = connection
                self._catch_up.clear()
                run = self._run
                self.reconciler.reconcile_once(
                    events_flowing=flowing,
                    followed=run.prompt_id if run else None,
                    queue_remaining=self._queue_remaining if woken else None,
                    holds=self._queue_remaining,
                )
                self._count_reconcile("ok")
                # A pass with nothing to ask ComfyUI (no job waits) says nothing about it.
                if self._ws_connected or self.client.answered_at >= started:
                    self._reachable(True)
                if self.idle is not None:
                    self.idle.check()
            except ComfyUIError as exc:
                self._count_reconcile("comfyui_error")
                self._reachable(False, exc)
            except StoreUnavailable:
                self._count_reconcile("error")  # a cluster's fleet says so, once an outage
            except Exception:
                self._count_reconcile("error")
                log.exception("reconciliation failed")
            self._heartbeat()
            # One wait per pass where one will do: on an idle host each wake-up of a thread
            # costs ~0.2 ms of CPU of its own, whatever the pass then does. The next pass comes
            # after RECONCILE_INTERVAL, or sooner when asked, but at most a few times a second
            # however fast the queue changes: never within MIN_RECONCILE_GAP of this one's end,
            # nor, for a `status` event, within `_refresh_gap` of its start. Not less often
            # while no job is unfinished: a socket gone silently dead brings no `status` event
            # for the next submission, and then only the timed pass finds the job's end.
            ended = time.monotonic()
            woken = self._reconcile_now.wait(self.config.reconcile_interval + MIN_RECONCILE_GAP)
            self._reconcile_now.clear()
            if woken:
                now = time.monotonic()
                hold = MIN_RECONCILE_GAP - (now - ended)
                if not self._catch_up.is_set():
                    hold = max(hold, self._refresh_gap() - (now - started))
                if hold > 0:
                    self._stop.wait(hold)

    def _refresh_gap(self) -> float:
        """How long after a pass began one asked for by a `status` event may begin."""
        waiting = self._queue_remaining or 0
        longer = min(self.config.reconcile_interval, QUEUE_REFRESH_PER_PROMPT * waiting)
        return max(QUEUE_REFRESH_GAP, longer)

    def _reachable(self, reachable: bool, why: object = None) -> None:
        """What ComfyUI's last answer, or its failure to answer, says (/api/health's
        tracker.comfyui_reachable and the sidecar_comfyui_reachable gauge); logged as it
        changes."""
        if reachable and self._comfyui_reachable is False:
            log.info("ComfyUI at %s answers again", self.config.comfyui_url)
        elif not reachable and self._comfyui_reachable is not False:
            log.warning(
                "ComfyUI at %s is not answering (%s); jobs stay as they are until it is back",
                self.config.comfyui_url,
                why,
            )
        self._comfyui_reachable = reachable

    def _count_reconcile(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.reconciles.labels(outcome).inc()

    def _heartbeat(self) -> None:
        """Record the tracker's state for /api/health: when it changes, else at most once a
        RECONCILE_INTERVAL (passes asked for by `status` events come several times a second
        under load, and each write is a commit that makes every other connection to the
        database read its pages again): `last_seen_seconds_ago` stays under about two
        intervals while the tracker lives."""
        if not self.leader:
            return
        state = {
            "pid": os.getpid(),
            "websocket": "connected" if self._ws_connected else "disconnected",
            "comfyui_reachable": self._comfyui_reachable,
            "client_id": self.client_id,
        }
        last, at = self._beat
        now = time.monotonic()
        if state == last and now - at < self.config.reconcile_interval:
            return
        try:
            self.store.put_meta(self.config.tracker_key, state)
            self._beat = (state, now)
        except StoreUnavailable:
            pass  # written again at the next pass; a cluster's fleet says why, once
        except Exception:
            log.exception("could not record the tracker heartbeat")
