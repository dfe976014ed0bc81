"""How a job ends: the one Finisher every path goes through (ComfyUI's /history entry, an error
event, a cancellation, a deadline, a lost prompt), and what became of a prompt according to
ComfyUI's record of it."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from api import comfyui, rejections
from api.delivery import NewDelivery
from api.job import Job, JobStatus
from api.jobstore import JobStore

log = logging.getLogger(__name__)

# Which deliveries (webhooks, uploads) a job owes when it ends this way.
DeliveryPlan = Callable[[Job, JobStatus, list[dict]], list[NewDelivery]]


class Finisher:
    """The one way a job ends. The store moves the job to its final state and writes the
    deliveries it owes in one transaction (a crash in between loses nothing); then the
    follow-ups (metrics, save_to_disk, waking the outbox) run, once, in the process that
    settled it. Every path that ends a job calls finish(), so none can skip the outbox."""

    def __init__(
        self,
        store: JobStore,
        plan: DeliveryPlan | None = None,
        after: Sequence[Callable[[Job], None]] = (),
    ) -> None:
        self.store = store
        self.plan = plan
        self.after = list(after)
        # Called once the job's deliveries are written, only when it owes some: the senders
        # need not look for work after every job.
        self.owed: Callable[[], None] | None = None

    def finish(
        self,
        job: Job,
        status: JobStatus,
        outputs: list[dict] | None = None,
        error: str | None = None,
        error_details: Any = None,
        prompt_id: str | None = None,
        unclaimed: bool = False,
        node: str | None = None,
        ran_for: float | None = None,
    ) -> bool:
        """Settle the job; False if it already was final (then nothing else happens).

        prompt_id: only while the job still runs as that prompt; unclaimed: only while no
        node of a cluster holds it; node: its run's last node; ran_for: how long ago its run
        started (all four: see JobStore.finish)."""
        deliveries = self.plan(job, status, outputs or []) if self.plan else []
        done = self.store.finish(
            job.id,
            status,
            outputs,
            error,
            error_details,
            deliveries,
            prompt_id=prompt_id,
            unclaimed=unclaimed,
            node=node,
            ran_for=ran_for,
        )
        if done is None:
            return False
        for hook in self.after:
            try:
                hook(done)
            except Exception:
                # The job is settled and its deliveries are safe in the outbox; a follow-up
                # that fails must not make the caller think otherwise.
                log.exception("follow-up of job %s failed", job.id)
        if deliveries and self.owed is not None:
            self.owed()
        return True


def collect_outputs(history_outputs: dict) -> list[dict]:
    """Every image of every output node of a history entry, in node order."""
    images: list[dict] = []
    for node_id, ui in (history_outputs or {}).items():
        if not isinstance(ui, dict):
            continue
        for key in ("images", "gifs"):
            for item in ui.get(key) or []:
                if isinstance(item, dict) and item.get("filename"):
                    images.append(
                        {
                            "filename": item["filename"],
                            "subfolder": item.get("subfolder") or "",
                            "type": item.get("type") or "output",
                            "node_id": node_id,
                        }
                    )
    return images


def outcome_of(entry: dict) -> tuple[JobStatus, str | None, dict | None]:
    """Final status, error message and error payload of a finished history entry."""
    status = entry.get("status") or {}
    messages = status.get("messages") or []
    by_type = {m[0]: m[1] for m in messages if isinstance(m, list | tuple) and len(m) == 2}
    if "execution_error" in by_type:
        data = by_type["execution_error"]
        return JobStatus.FAILED, rejections.execution_error_message(data), data
    if "execution_interrupted" in by_type:
        return (
            JobStatus.CANCELLED,
            "Cancelled: interrupted in ComfyUI",
            by_type["execution_interrupted"],
        )
    status_str = status.get("status_str")
    if status_str == "success" or (status_str is None and status.get("completed", True)):
        return JobStatus.COMPLETED, None, None
    return JobStatus.FAILED, f"ComfyUI reported status {status_str!r}", status


def run_age(entry: dict) -> float | None:
    """Seconds since the run of a /history entry started, by its `execution_start` message's
    timestamp (ms, on ComfyUI's clock: the same host's, or near it); None without one (servers
    before 2025 write none)."""
    for message in (entry.get("status") or {}).get("messages") or []:
        if isinstance(message, list | tuple) and len(message) == 2:
            kind, data = message
            if kind == "execution_start" and isinstance(data, dict):
                stamp = data.get("timestamp")
                if isinstance(stamp, int | float) and not isinstance(stamp, bool):
                    return max(time.time() - stamp / 1000, 0.0)
    return None


class RunStarts:
    """When the tracker saw the latest runs start (their `execution_start`), by prompt_id: a
    job's start when its own write found no row. On servers that ignore the prompt_id the
    sidecar asks for, a run of a few milliseconds can start, and end, before its job records
    the one it got; its end (from the events, or from /history in a reconciliation pass, whose
    entries these servers write without times) then records its start too."""

    KEEP = 256  # runs remembered: far more than end between a run's start and its job's end

    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()  # the socket's thread adds, the reconciliation's reads

    def saw(self, prompt_id: str) -> None:
        with self._lock:
            self._seen[prompt_id] = time.monotonic()
            if len(self._seen) > self.KEEP:
                self._seen.popitem(last=False)

    def ran_for(self, prompt_id: str) -> float | None:
        """Seconds since the run of `prompt_id` started; None if it was not seen."""
        with self._lock:
            began = self._seen.get(prompt_id)
        return None if began is None else time.monotonic() - began


@dataclass
class RunSeen:
    """What the tracker's WebSocket said about one run of a prompt, from its
    `execution_start` on: the nodes ComfyUI took from its cache, the UI output of every
    `executed` node, and whether an error or interruption was announced."""

    prompt_id: str
    cached: list[str] | None = None  # None: no execution_cached message seen yet
    outputs: dict[str, dict] = field(default_factory=dict)
    ended_badly: bool = False
    # The node running when the run ended, not yet recorded (held by the tracker's
    # PROGRESS_GAP): recorded with the job's end instead of in a write of its own.
    last_node: str | None = None

    def outputs_if_complete(self, job: Job, output_classes: frozenset[str] | None) -> dict | None:
        """The run's outputs (as a /history entry's `outputs`) when the events alone are sure
        to hold all of them; None when only /history can say. ComfyUI servers before late 2024
        send no `executed` for an output node taken from the cache (history still lists its
        images), so a run with a cached output node, or whose node types are not known, is
        settled from /history."""
        if self.ended_badly or self.cached is None:
            return None
        if self.cached:
            if output_classes is None:
                return None
            graph = job.graph or {}
            if any(
                (graph.get(node) or {}).get("class_type") in output_classes for node in self.cached
            ):
                return None
        return self.outputs


def settle_from_events(
    finisher: Finisher, client: comfyui.ComfyUIClient, run: RunSeen, ran_for: float | None = None
) -> bool:
    """Finish a job whose whole run the WebSocket reported (`executing` null came after
    every `executed`) without asking ComfyUI; from /history when the events may lack an
    output (see RunSeen). `ran_for`: see JobStore.finish."""
    job = finisher.store.find_by_prompt(run.prompt_id)
    if job is None:
        return False
    if job.finished:
        return True  # as settle_from_history: final is settled
    outputs = run.outputs_if_complete(job, client.output_node_classes())
    if outputs is None:
        return settle_from_history(finisher, client, run.prompt_id, job, run.last_node, ran_for)
    images = collect_outputs(outputs)
    completed = JobStatus.COMPLETED
    ended = {"prompt_id": run.prompt_id, "node": run.last_node, "ran_for": ran_for}
    if finisher.finish(job, completed, images, **ended):
        log.info("job %s %s (%d images)", job.id, completed, len(images))
    return True


def settle_from_history(
    finisher: Finisher,
    client: comfyui.ComfyUIClient,
    prompt_id: str,
    job: Job | None = None,
    node: str | None = None,
    ran_for: float | None = None,
) -> bool:
    """Finish a job from its /history entry. True once the job is final: settled here, or
    already (by another thread, e.g. the tracker's events while a reconciliation looked at
    the prompt: False there made a pass take a finished job for lost); False if no job has
    the prompt (yet) or ComfyUI has no entry for it (yet). `node`: the run's last node, not
    yet recorded (RunSeen.last_node); `ran_for`: how long ago its run started (see
    JobStore.finish), else what the entry says."""
    store = finisher.store
    job = job or store.find_by_prompt(prompt_id)
    if job is None:
        return False
    if job.finished:
        return True
    entry = client.history(prompt_id)
    if not entry:
        return False
    status, error, details = outcome_of(entry)
    outputs = collect_outputs(entry.get("outputs") or {})
    ran_for = run_age(entry) if ran_for is None else ran_for
    ended = {"prompt_id": prompt_id, "node": node, "ran_for": ran_for}
    if finisher.finish(job, status, outputs, error, details, **ended):
        log.info("job %s %s (%d images)", job.id, status, len(outputs))
    return True
