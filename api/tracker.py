"""The job tracker: follows every submitted job until it is completed, failed or cancelled.

Exactly one tracker runs per deployment (per state directory): every gunicorn worker starts a
candidate thread, and the one that takes an exclusive flock on <state_dir>/tracker.lock runs it.
The kernel drops the lock when that process dies, and another worker takes over within
ELECTION_RETRY seconds. One tracker means one WebSocket to ComfyUI and one writer of job
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
from pathlib import Path

import websocket

from api import cancellation, comfyui, outputs
from api.config import Config
from api.jobs import JobStatus, JobStore
from api.settling import settle_from_history

log = logging.getLogger(__name__)

ELECTION_RETRY = 3.0
WS_IDLE_PING = 15.0  # ComfyUI sends no pings; we ping it to find silently dead sockets.
WS_DEAD_AFTER = 40.0  # no frame at all (not even a pong) for this long: reconnect.
WS_MAX_BACKOFF = 30.0
MIN_RECONCILE_GAP = 0.25
RECENT_HISTORY = 64  # history entries searched for jobs whose submission was not confirmed
PURGE_EVERY = 3600.0


class Tracker:
    """Elects itself, then runs the WebSocket listener and the reconciler threads."""

    def __init__(self, config: Config, store: JobStore, client_id: str, on_finished=None) -> None:
        self.config = config
        self.on_finished = on_finished  # called with the job row after it completes
        self.store = store
        self.client_id = client_id
        self.lock_path = Path(config.state_dir) / "tracker.lock"
        self._stop = threading.Event()
        self._lock_file = None
        self._threads: list[threading.Thread] = []
        self._ws: websocket.WebSocket | None = None
        self._ws_connected = False
        self._comfyui_reachable: bool | None = None
        self._running_prompt: str | None = None  # for old servers' events without prompt_id
        self._missing_since: dict[str, float] = {}
        self._reconcile_now = threading.Event()
        self.leader = False

    def _client(self) -> comfyui.ComfyUIClient:
        # One client (one requests.Session) per thread: sessions are not thread-safe.
        local = threading.current_thread()
        client = getattr(local, "_sidecar_comfyui", None)
        if client is None:
            client = comfyui.ComfyUIClient(self.config.comfyui_url, self.config.comfyui_timeout)
            local._sidecar_comfyui = client
        return client

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        thread = threading.Thread(target=self._elect, name="tracker-election", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
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

    def _try_lock(self) -> bool:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
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
            if self._try_lock():
                self.leader = True
                log.info("tracker elected in pid %s (client_id %s)", os.getpid(), self.client_id)
                for target, name in (
                    (self._ws_loop, "tracker-ws"),
                    (self._reconcile_loop, "tracker-reconcile"),
                ):
                    thread = threading.Thread(target=target, name=name, daemon=True)
                    thread.start()
                    self._threads.append(thread)
                return
            self._stop.wait(ELECTION_RETRY)

    # --- WebSocket ------------------------------------------------------------------------

    def _ws_loop(self) -> None:
        backoff = 0.5
        url = self._client().ws_url(self.client_id)
        while not self._stop.is_set():
            try:
                ws = websocket.create_connection(
                    url, timeout=self.config.comfyui_connect_timeout, enable_multithread=True
                )
            except Exception as exc:
                self._set_ws(False)
                log.debug("websocket connect to %s failed: %s", url, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, WS_MAX_BACKOFF)
                continue
            backoff = 0.5
            self._ws = ws
            self._set_ws(True)
            log.info("websocket connected to %s", url)
            # Events sent while we were away are gone for good: look at every job now.
            self._reconcile_now.set()
            try:
                self._read(ws)
            except Exception as exc:
                log.warning("websocket to ComfyUI lost: %s", exc)
            finally:
                self._ws = None
                self._set_ws(False)
                with contextlib.suppress(Exception):
                    ws.close(timeout=1)

    def _read(self, ws: websocket.WebSocket) -> None:
        ws.settimeout(WS_IDLE_PING)
        last_frame = time.monotonic()
        while not self._stop.is_set():
            try:
                opcode, frame = ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                if time.monotonic() - last_frame > WS_DEAD_AFTER:
                    raise ConnectionError("no frame from ComfyUI, not even a pong") from None
                ws.ping()
                continue
            last_frame = time.monotonic()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise ConnectionError("ComfyUI closed the websocket")
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue  # binary previews and pongs carry nothing the job state needs
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
        if kind == "status":
            # ComfyUI's queue changed (a prompt was added, started or finished): refresh queue
            # positions soon rather than at the next interval.
            self._reconcile_now.set()
        elif kind == "execution_start":
            self._running_prompt = prompt_id
            self.store.mark_processing(prompt_id)
        elif kind == "executing":
            prompt_id = prompt_id or self._running_prompt
            if prompt_id is None:
                return
            if data.get("node") is None:
                # The "done" signal: sent after ComfyUI wrote the history entry.
                self._running_prompt = None
                self.settle_from_history(prompt_id)
            else:
                self._running_prompt = prompt_id
                self.store.mark_processing(prompt_id, str(data["node"]))
        elif kind == "progress":
            prompt_id = prompt_id or self._running_prompt
            if prompt_id is not None:
                self.store.record_progress(
                    prompt_id,
                    int(data.get("value", 0)),
                    int(data.get("max", 0)),
                    data.get("node"),
                )
        elif kind == "execution_error":
            job = self.store.by_prompt_id(prompt_id) if prompt_id else None
            if job is not None:
                self.store.finish(
                    job["id"],
                    JobStatus.FAILED,
                    error=comfyui.execution_error_message(data),
                    error_details=data,
                )
        elif kind == "execution_interrupted":
            job = self.store.by_prompt_id(prompt_id) if prompt_id else None
            if job is not None:
                self.store.finish(
                    job["id"],
                    JobStatus.CANCELLED,
                    error="Cancelled: interrupted in ComfyUI",
                    error_details=data,
                )

    # --- reconciliation -------------------------------------------------------------------

    def settle_from_history(self, prompt_id: str) -> bool:
        return settle_from_history(self.store, self._client(), prompt_id, self.on_finished)

    def _reconcile_loop(self) -> None:
        last_purge = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_purge > PURGE_EVERY:
                last_purge = time.monotonic()
                try:
                    self.purge_old_jobs()
                except Exception:
                    log.exception("purging old jobs failed")
            try:
                self.reconcile_once()
                if self._comfyui_reachable is False:
                    log.info("ComfyUI at %s answers again", self.config.comfyui_url)
                self._comfyui_reachable = True
            except comfyui.ComfyUIError as exc:
                if self._comfyui_reachable is not False:
                    log.warning(
                        "ComfyUI at %s is not answering (%s); jobs stay as they are until it is"
                        " back",
                        self.config.comfyui_url,
                        exc,
                    )
                self._comfyui_reachable = False
            except Exception:
                log.exception("reconciliation failed")
            self._heartbeat()
            # At most a few reconciliations a second, however fast the queue changes.
            self._stop.wait(MIN_RECONCILE_GAP)
            self._reconcile_now.wait(self.config.reconcile_interval)
            self._reconcile_now.clear()

    def reconcile_once(self) -> None:
        """Compare every unfinished job with ComfyUI's queue and history, and settle it."""
        jobs = self.store.unfinished()
        if not jobs:
            self._missing_since.clear()
            return
        client = self._client()
        queue = client.queue()
        items = queue["queue_running"] + queue["queue_pending"]
        self._adopt_unconfirmed(jobs, items)
        running = {item[1] for item in queue["queue_running"]}
        pending = {item[1] for item in queue["queue_pending"]}
        positions = {prompt_id: 0 for prompt_id in running}
        positions.update({item[1]: n for n, item in enumerate(queue["queue_pending"], start=1)})
        self.store.set_queue_positions(
            {j["prompt_id"]: positions.get(j["prompt_id"]) for j in jobs if j["prompt_id"]}
        )
        now = time.time()
        seen: set[str] = set()
        for job in self.store.unfinished():
            prompt_id = job["prompt_id"]
            if not prompt_id:
                continue
            seen.add(prompt_id)
            if job["deadline"] is not None and now > job["deadline"]:
                self._time_out(job, prompt_id in running, prompt_id in pending)
                continue
            if prompt_id in running:
                self._missing_since.pop(prompt_id, None)
                if job["status"] == JobStatus.QUEUED:
                    self.store.mark_processing(prompt_id)
                continue
            if prompt_id in pending:
                self._missing_since.pop(prompt_id, None)
                continue
            if self.settle_from_history(prompt_id):
                self._missing_since.pop(prompt_id, None)
                continue
            self._handle_missing(job, now)
        for prompt_id in list(self._missing_since):
            if prompt_id not in seen:
                del self._missing_since[prompt_id]

    def _adopt_unconfirmed(self, jobs: list[dict], queue_items: list) -> None:
        """Find jobs whose POST /prompt answer never arrived (sidecar killed, timeout) by the
        job id the sidecar put in the prompt's extra_data, and take over ComfyUI's prompt_id.
        Servers that honour a client prompt_id need none of this; early-2024 servers do."""
        unconfirmed = {j["id"]: j for j in jobs if j["submitted_at"] is None}
        if not unconfirmed:
            return
        found: dict[str, str] = {}
        for item in queue_items:
            extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
            if extra.get(comfyui.JOB_MARKER) in unconfirmed:
                found[extra[comfyui.JOB_MARKER]] = item[1]
        if len(found) < len(unconfirmed):
            for prompt_id, entry in self._client().recent_history(RECENT_HISTORY).items():
                prompt = entry.get("prompt") or []
                extra = prompt[3] if len(prompt) > 3 and isinstance(prompt[3], dict) else {}
                if extra.get(comfyui.JOB_MARKER) in unconfirmed:
                    found[extra[comfyui.JOB_MARKER]] = prompt_id
        for job_id, prompt_id in found.items():
            log.info("job %s found in ComfyUI as prompt %s", job_id, prompt_id)
            self.store.mark_submitted(job_id, prompt_id)

    def _time_out(self, job: dict, running: bool, pending: bool) -> None:
        minutes = round((job["deadline"] - job["created_at"]) / 60, 2)
        # Failed first: the interruption ComfyUI then reports must not make it "cancelled".
        if not self.store.finish(
            job["id"], JobStatus.FAILED, error=f"Job timed out after {minutes:g} minutes"
        ):
            return
        log.warning("job %s timed out after %g minutes", job["id"], minutes)
        if pending or running:
            cancellation.stop(self._client(), job["prompt_id"], pending)

    def _handle_missing(self, job: dict, now: float) -> None:
        """A job ComfyUI has neither queued, running, nor in its history."""
        prompt_id = job["prompt_id"]
        if job["submitted_at"] is None:
            # Created, but the POST /prompt that submits it never answered: it may still be in
            # flight in another worker (so wait longer than a read timeout), or the sidecar died
            # before sending it. Not in ComfyUI after that: safe to send now.
            # The grace counts only time during which ComfyUI answered (this method runs only
            # then): a POST held up by a network stall can still land after the stall ends,
            # and is then found by its job id instead of being sent a second time.
            grace = max(self.config.lost_job_grace, self.config.comfyui_read_timeout + 5)
            first = self._missing_since.setdefault(prompt_id, now)
            if now - job["created_at"] > grace and now - first >= self.config.lost_job_grace:
                self._missing_since.pop(prompt_id, None)
                self._resubmit_or_fail(
                    job,
                    "the sidecar stopped before ComfyUI confirmed the job, and ComfyUI does"
                    " not have it",
                )
            return
        first = self._missing_since.setdefault(prompt_id, now)
        if now - first < self.config.lost_job_grace:
            return
        self._missing_since.pop(prompt_id, None)
        if job["status"] == JobStatus.PROCESSING or job["queue_position"] == 0:
            self.store.finish(
                job["id"],
                JobStatus.FAILED,
                error="ComfyUI restarted while the job was running (it is in neither its"
                " queue nor its history): the result is lost; submit it again",
            )
            log.warning("job %s was running when ComfyUI restarted", job["id"])
        else:
            self._resubmit_or_fail(
                job, "ComfyUI restarted (or its queue was cleared) before the job ran"
            )

    def _resubmit_or_fail(self, job: dict, why: str) -> None:
        if not self.config.resubmit_lost_jobs:
            self.store.finish(
                job["id"], JobStatus.FAILED, error=f"{why}; RESUBMIT_LOST_JOBS is off"
            )
            return
        try:
            submitted = self._client().submit(
                job["graph"],
                self.client_id,
                prompt_id=self._client().new_prompt_id(),
                extra_data={comfyui.JOB_MARKER: job["id"]},
            )
        except comfyui.ComfyUIRejected as exc:
            self.store.finish(job["id"], JobStatus.FAILED, error=f"{why}; {exc.message}")
            return
        self.store.resubmitted(job["id"], submitted.prompt_id)
        log.warning("job %s resubmitted as prompt %s: %s", job["id"], submitted.prompt_id, why)

    def purge_old_jobs(self) -> int:
        """Delete finished jobs past JOB_RETENTION_DAYS (and their files if PURGE_FILES)."""
        cutoff = time.time() - self.config.job_retention_days * 86400
        removed = self.store.purge(cutoff)
        if self.config.purge_files:
            for job in removed:
                for image in job["outputs"]:
                    try:
                        path = outputs.resolve(
                            self.config.comfyui_output_dir, image["filename"], image["subfolder"]
                        )
                        path.unlink()
                    except (OSError, outputs.UnsafePath):
                        continue
        if removed:
            log.info("purged %d jobs finished before the retention period", len(removed))
        return len(removed)

    def _heartbeat(self) -> None:
        if not self.leader:
            return
        try:
            self.store.put_meta(
                "tracker",
                {
                    "pid": os.getpid(),
                    "websocket": "connected" if self._ws_connected else "disconnected",
                    "comfyui_reachable": self._comfyui_reachable,
                    "client_id": self.client_id,
                },
            )
        except Exception:
            log.exception("could not record the tracker heartbeat")
