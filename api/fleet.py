"""This node's part in a cluster: claiming work, keeping its leases, taking back lost jobs.

With a shared store (JOB_STORE_URL=postgresql://...) every sidecar owns one ComfyUI and pulls
work: any node stores a submission `queued`; a node claims the next job it can run (priority,
then age) while its ComfyUI holds fewer than COMFYUI_MAX_PENDING of its jobs, sends it, and
renews the lease on everything it holds with each heartbeat. When a node's leases lapse (process
killed, host gone, database unreachable for longer than the lease), any other node takes its
jobs back: queued ones return to the queue, a running one is queued again (attempts + 1) or
failed, as RESUBMIT_LOST_JOBS says. A job taken back gets a new prompt_id when it is claimed
again, and every write about a run names its prompt_id, so a node that comes back after losing
its lease changes nothing and stops what its ComfyUI still runs for jobs it no longer holds.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time

from api import cancellation, comfyui, outputs, submission
from api.config import Config
from api.exceptions import (
    AlreadyFinished,
    ComfyUIError,
    ComfyUIRejected,
    ComfyUITimeout,
    ComfyUIUnreachable,
    StoreUnavailable,
)
from api.graphs import catalog, check
from api.graphs.library import WorkflowLibrary
from api.job import Job, JobStatus
from api.jobstore import NodeInfo
from api.outcome import Finisher
from api.postgres_store import PostgresJobStore

log = logging.getLogger(__name__)

# Raw graphs name no workflow: any node whose ComfyUI took the node-class check can run them.
ANY_NODE = "(raw graph)"


class Fleet:
    """One node of a cluster: its id, what it can run, and its loops (run by the tracker)."""

    def __init__(
        self,
        config: Config,
        store: PostgresJobStore,
        client: comfyui.ComfyUIClient,
        client_id: str,
        library: WorkflowLibrary,
        version: str,
        finisher: Finisher,
    ) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.client_id = client_id
        self.library = library
        self.version = version
        self.finisher = finisher
        self.node = config.node_id
        store.own_node = self.node
        # Every node's ComfyUI numbers its files from 1: this node's go into a folder named
        # after it, so an image's name (sub/folder/file.png) is unique in the whole cluster.
        self.output_folder = re.sub(r"[^A-Za-z0-9._-]", "_", self.node)
        self.lease = config.lease_seconds
        self.max_pending = config.comfyui_max_pending
        self._runnable: tuple[float, list[str], dict[str, str]] = (0.0, [], {})
        self._runnable_lock = threading.Lock()
        self._connected_since: float | None = None
        self._comfyui_reachable = False
        self._comfyui_version: str | None = None
        self._devices: list[dict] = []

    # --- what this node can run -----------------------------------------------------------

    def capabilities(self) -> tuple[list[str], dict[str, str]]:
        """(workflows this node's ComfyUI can run, why not for the others); refreshed every
        CATALOG_MAX_AGE from the same cached /object_info the submission checks use."""
        with self._runnable_lock:
            at, runnable, blocked = self._runnable
            if time.monotonic() - at < self.config.catalog_max_age and at:
                return runnable, blocked
        try:
            report = catalog.report(self.library, self.client.cached_object_info())
        except ComfyUIError as exc:
            why = f"ComfyUI not answering: {exc.message}"
            runnable, blocked = [], {name: why for name in self.library.names()}
        else:
            runnable = [name for name, problems in report.items() if not problems]
            blocked = {name: check.summary(p) for name, p in report.items() if p}
            runnable.append(ANY_NODE)
        with self._runnable_lock:
            self._runnable = (time.monotonic(), runnable, blocked)
        return runnable, blocked

    def can_run(self, workflow: str) -> bool:
        return workflow in self.capabilities()[0]

    # --- claiming and sending -------------------------------------------------------------

    def create(self, job: Job) -> Job:
        """Write a new job's row, claimed by this node when it has room and can run it (one
        transaction); the job as written, with no `node` when it waits for the first node
        with room."""
        runnable, _ = self.capabilities()
        if not self._comfyui_reachable and not self._probe():
            runnable = []  # written for another node
        return self.store.create_claimed(job, self.node, runnable, self.max_pending, self.lease)

    def _probe(self) -> bool:
        try:
            self.client.system_stats(timeout=(1.0, 2.0))
        except ComfyUIError:
            return False
        self._comfyui_reachable = True
        return True

    def release(self, job: Job) -> bool:
        """Give a job this node claimed back to the queue (its ComfyUI could not take it)."""
        released = self.store.release(job.id, job.prompt_id)
        if released:
            log.info("job %s given back to the queue", job.id)
        return released

    def fill(self) -> int:
        """Claim and send jobs while this node has room; returns how many were sent."""
        sent = 0
        runnable, _ = self.capabilities()
        if not self._comfyui_reachable:
            return 0
        for job in self.store.claim(self.node, runnable, self.max_pending, self.lease):
            front = job.options.get("priority") == "high"
            try:
                folder = outputs.sending_folder(self.config, self)
                submission.send(self.client, self.store, self.client_id, job, front, folder)
                sent += 1
            except ComfyUIRejected as exc:
                self.finisher.finish(
                    job, JobStatus.FAILED, error=exc.message, error_details=exc.problems,
                    prompt_id=job.prompt_id,
                )  # fmt: skip
            except ComfyUITimeout:
                pass  # it may be queued: the reconciler finds it by its marker, or resends
            except ComfyUIUnreachable:
                self._comfyui_reachable = False
                self.release(job)
                break
        return sent

    def overview(self) -> Overview:
        return Overview(self.store, self.lease)

    def node_info(self, node: str) -> NodeInfo | None:
        """What another node last said about itself (its NODE_URL, its output folder...)."""
        for info, _, _ in self.store.nodes():
            if info.id == node:
                return info
        return None

    # --- the shared queue ------------------------------------------------------------------

    @staticmethod
    def shared_queue(jobs: list[Job]) -> tuple[dict, dict[str, int], dict[str, dict]]:
        """The cluster's queue from the store: (the primary API's `queue`, each job's place in
        it: 0 running, 1.. waiting, and running/pending counts per node)."""
        running = [j for j in jobs if j.status == JobStatus.PROCESSING or j.queue_position == 0]
        ids = {j.id for j in running}
        waiting = sorted(
            (j for j in jobs if j.id not in ids),
            key=lambda j: (
                j.node is None,  # what nodes hold runs before what waits for a node
                j.queue_position if j.queue_position is not None else 1 << 30,
                -int(j.options.get("priority") == "high"),
                j.created_at,
            ),
        )
        places = {j.id: 0 for j in running} | {j.id: n for n, j in enumerate(waiting, 1)}
        per_node: dict[str, dict] = {}
        for job in jobs:
            node = job.node or "(waiting for a node)"
            counts = per_node.setdefault(node, {"running": 0, "pending": 0})
            counts["running" if job.id in ids else "pending"] += 1
        contract = {
            "queue_pending": [[places[j.id], j.prompt_id] for j in waiting],
            "queue_running": [[0, j.prompt_id] for j in running],
        }
        return contract, places, per_node

    # --- cancelling ------------------------------------------------------------------------

    # How long a cancel waits for the node holding the job to act before answering "requested".
    CANCEL_WAIT = 10.0

    def _cancel_waiting(self, job: Job, message: str) -> bool:
        """Cancel a job while no node holds it (False: a node claimed it meanwhile)."""
        return self.finisher.finish(job, JobStatus.CANCELLED, error=message, unclaimed=True)

    def cancel_elsewhere(self, job: Job, message: str) -> str:
        """Cancel a job this node does not hold: directly while no node holds it, else by
        asking its node (which stops it in its own ComfyUI) and waiting for the outcome."""
        if job.node is None and self._cancel_waiting(job, message):
            return "queued"
        self.store.request_cancel(job.id)
        deadline = time.monotonic() + self.CANCEL_WAIT
        since = None
        while (remaining := deadline - time.monotonic()) > 0 and not self.store.waits_stopped:
            current = self.store.get(job.id)
            if current is None or current.finished:
                break
            if current.node is None and self._cancel_waiting(current, message):
                return "queued"
            if current.node == self.node:
                return cancellation.cancel(current, self.finisher, self.client)
            since = current.updated_at if since is None else since
            self.store.wait_for_change(job.id, since, remaining)
            since = None
        current = self.store.get(job.id)
        if current is not None and current.finished:
            if current.status != JobStatus.CANCELLED:
                raise cancellation.already_finished(current)
            return f"on node {job.node}"
        return cancellation.REQUESTED

    def cancel_all_elsewhere(
        self, jobs: list[Job], include_running: bool
    ) -> tuple[list[str], list[str]]:
        """Cancel jobs this node does not hold: the ones no node holds at once, and ask the
        other nodes to cancel their pending ones (running ones too with include_running).
        Returns (cancelled job ids, ids of jobs other nodes were asked to cancel)."""
        cancelled, requested = [], []
        for job in jobs:
            if job.node is None:
                if self._cancel_waiting(job, cancellation.CANCELLED_MESSAGE):
                    cancelled.append(job.id)
            elif job.node != self.node:
                running = job.status == JobStatus.PROCESSING or job.queue_position == 0
                if (include_running or not running) and self.store.request_cancel(job.id):
                    requested.append(job.id)
        return cancelled, requested

    def handle_cancel_requests(self) -> None:
        """Stop the jobs this node holds that a request on any node asked to cancel."""
        for job in self.store.cancel_requests(self.node):
            try:
                cancellation.cancel(job, self.finisher, self.client)
            except AlreadyFinished:
                continue

    # --- leases and lost nodes ------------------------------------------------------------

    def info(self) -> NodeInfo:
        runnable, blocked = self.capabilities()
        held = self.store.unfinished(self.node)
        running = [j.id for j in held if j.queue_position == 0 or j.status == "processing"]
        return NodeInfo(
            id=self.node,
            comfyui_url=self.config.comfyui_url,
            api_url=self.config.node_url,
            output_dir=str(self.config.comfyui_output_dir),
            version=self.version,
            comfyui_reachable=self._comfyui_reachable,
            comfyui_version=self._comfyui_version,
            devices=self._devices,
            workflows=runnable,
            cannot_run=blocked,
            current_job=running[0] if running else None,
            held=len(held),
            max_pending=self.max_pending,
            pid=os.getpid(),
            heartbeat_interval=max(self.lease / 3, 0.2),
        )

    def heartbeat(self) -> None:
        """Renew every lease this node holds and tell the others how it is."""
        try:
            stats = self.client.system_stats(timeout=(1.0, 3.0))
            self._comfyui_reachable = True
            self._comfyui_version = (stats.get("system") or {}).get("comfyui_version")
            self._devices = stats.get("devices") or []
        except ComfyUIError:
            self._comfyui_reachable = False
        self.store.renew_leases(self.node, self.lease)
        self.store.heartbeat(self.info())
        if self._connected_since is None:
            self._connected_since = time.monotonic()

    def reap(self) -> int:
        """Take back the jobs of nodes whose leases lapsed; returns how many.

        Only after this node has itself been connected for a whole lease: after the database
        was away for everyone, every live node must have had the chance to renew first."""
        if self._connected_since is None or time.monotonic() - self._connected_since < self.lease:
            return 0
        taken = 0
        for job in self.store.expired():
            if job.node == self.node:
                continue  # ours: renewed by our own heartbeat, never reaped by ourselves
            running = job.status == JobStatus.PROCESSING or job.queue_position == 0
            if job.cancel_requested:
                done = self.finisher.finish(
                    job, JobStatus.CANCELLED, error=cancellation.CANCELLED_MESSAGE,
                    prompt_id=job.prompt_id,
                )  # fmt: skip
            elif running and not self.config.resubmit_lost_jobs:
                done = self.finisher.finish(
                    job,
                    JobStatus.FAILED,
                    error=f"node {job.node} was lost while it ran the job; RESUBMIT_LOST_JOBS"
                    " is off",
                    prompt_id=job.prompt_id,
                )
            else:
                done = self.store.requeue(job.id, job.prompt_id)
            if done:
                taken += 1
                log.warning("job %s taken back from node %s (lease lapsed)", job.id, job.node)
        return taken

    def expire_waiting(self) -> int:
        """Fail the jobs whose deadline passed while they waited for a node (none could run
        them, or the one they are pinned to is gone): a deadline holds wherever a job is."""
        failed = 0
        for job in self.store.overdue_unclaimed():
            minutes = round((job.deadline - job.created_at) / 60, 2)
            reason = Overview(self.store, self.lease).waiting_reason(job)
            error = f"Job timed out after {minutes:g} minutes, waiting for a node" + (
                f": {reason}" if reason else ""
            )
            if self.finisher.finish(job, JobStatus.FAILED, error=error, unclaimed=True):
                failed += 1
                log.warning("job %s timed out while it waited for a node", job.id)
        return failed

    def lost_contact(self) -> None:
        """The store stopped answering: reaping waits for a whole lease once it is back."""
        self._connected_since = None

    def stop_orphans(self, queue: comfyui.QueueSnapshot) -> None:
        """Stop prompts this node's ComfyUI runs or holds for jobs this node no longer holds
        under that prompt (taken back while this node was away): they must not run twice."""
        for job_id, prompt_id in queue.prompts_of_jobs().items():
            job = self.store.get(job_id)
            if job is None:
                continue  # not a job of this cluster's store
            if job.node == self.node and (not job.submitted or job.prompt_id == prompt_id):
                continue  # ours: running as recorded, or just sent and not yet confirmed
            log.warning("stopping prompt %s: job %s is no longer this node's", prompt_id, job_id)
            cancellation.stop(self.client, prompt_id, queue.is_pending(prompt_id))

    # --- the loops the tracker runs -------------------------------------------------------

    def run_heartbeat(self, stop: threading.Event) -> None:
        interval = max(self.lease / 3, 0.2)
        while not stop.is_set():
            try:
                self.heartbeat()
                self.reap()
                self.expire_waiting()
            except StoreUnavailable as exc:
                if self._connected_since is not None:
                    log.warning("%s: this node takes no work until it answers", exc)
                self.lost_contact()
            except Exception:
                log.exception("heartbeat failed")
            stop.wait(interval)

    def run_dispatcher(self, stop: threading.Event) -> None:
        """Claim work whenever a job becomes claimable, or this node's room grows; look for
        cancel requests when the queue channel spoke, and every `interval`."""
        interval = max(self.lease / 3, 0.2)
        looked, woken_up = None, False
        while not stop.is_set():
            with self.store.queue_events() as woken:
                notices = self.store.queue_notices()  # after subscribing: none is missed
                try:
                    # A job's end wakes this loop for the room it made, once a job under a
                    # burst: no cancel request comes that way, and asking cost a query.
                    if notices != looked or not woken_up:
                        self.handle_cancel_requests()
                        looked = notices
                    self.fill()
                except StoreUnavailable:
                    pass  # the heartbeat says so
                except Exception:
                    log.exception("dispatching failed")
                woken_up = woken.wait(interval)


class Overview:
    """Every node of the cluster as the store last heard of it (for the fleet views)."""

    def __init__(self, store: PostgresJobStore, lease: float) -> None:
        self.store = store
        self.lease = lease

    # Read when first used: a status read asks for a waiting reason on every job, and only a
    # queued job no node holds needs the nodes (no finished one needs the per-node counts).
    @functools.cached_property
    def entries(self) -> list[tuple[NodeInfo, float, float]]:
        return self.store.nodes()

    @functools.cached_property
    def done(self) -> dict[str, int]:
        return self.store.jobs_done()

    def live(self) -> list[NodeInfo]:
        """Nodes that renewed their leases within one lease."""
        return [info for info, age, _ in self.entries if age < self.lease]

    def as_list(self) -> list[dict]:
        out = []
        for info, age, started in self.entries:
            alive = age < self.lease
            out.append(
                {
                    **info.as_dict(),
                    "alive": alive,
                    "health": _health(info, alive),
                    "last_heartbeat_seconds_ago": round(age, 1),
                    "started_at": started,
                    "jobs_done": self.done.get(info.id, 0),
                }
            )
        return out

    def runs_on(self, workflow: str) -> list[str]:
        return [info.id for info in self.live() if workflow in info.workflows]

    def waiting_reason(self, job: Job) -> str | None:
        """Why a queued job no node holds is still waiting, when no live node can run it."""
        if job.status != JobStatus.QUEUED or job.node is not None:
            return None
        live = self.live()
        if not live:
            return "no node of the cluster is alive: the job waits for one"
        if job.pinned_node is not None:
            if any(info.id == job.pinned_node for info in live):
                return None
            return (
                f"its input images are on node {job.pinned_node}, which is not alive: the job"
                " waits for it"
            )
        if any(job.workflow in info.workflows for info in live):
            return None
        why = "; ".join(
            f"{info.id}: {info.cannot_run.get(job.workflow, 'does not have this workflow')}"
            for info in live
        )
        return f"no live node can run workflow {job.workflow!r} ({why}); it waits for one that can"


def _health(info: NodeInfo, alive: bool) -> str:
    if not alive:
        return "lost"
    return "healthy" if info.comfyui_reachable else "comfyui_unreachable"
