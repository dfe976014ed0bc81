"""Cancelling one job, or every pending job, without ever touching another job.

Pending prompts are removed with POST /queue {"delete": [...]}, which only ever affects the
named prompts. Running prompts are stopped with the targeted POST /api/jobs/<id>/cancel where
the server has it (mid-2026 on), which interrupts only if that prompt still runs. On older
servers /interrupt is global (the 2024 server ignores its body), so the sidecar first checks
that its prompt is the one running and interrupts right after. The race that remains: if the
prompt finishes and ComfyUI starts the next one within the few milliseconds between that check
and the interrupt, the next prompt is interrupted instead (docs/api.md says so).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from api import comfyui
from api.exceptions import AlreadyFinished
from api.job import Job, JobStatus
from api.outcome import Finisher, settle_from_history

if TYPE_CHECKING:
    from api.fleet import Fleet

log = logging.getLogger(__name__)

CANCELLED_MESSAGE = "Cancelled by request"
# What cancel() answers when the node holding the job has been asked but has not yet acted.
REQUESTED = "cancel requested"


def already_finished(job: Job) -> AlreadyFinished:
    return AlreadyFinished(
        f"Job {job.id} is already {job.status}", job_id=job.id, job_status=job.status.value
    )


def _interrupt(client: comfyui.ComfyUIClient, prompt_id: str) -> bool:
    """Stop a running prompt, never another one. False if it was no longer running."""
    targeted = client.cancel_job(prompt_id)
    if targeted is not None:
        return targeted
    if not client.queue().is_running(prompt_id):
        return False
    client.interrupt(prompt_id)
    return True


def stop(client: comfyui.ComfyUIClient, prompt_id: str, pending: bool) -> None:
    """Take a prompt out of ComfyUI, whether it waits or runs (used for deadlines)."""
    if pending:
        client.delete_pending([prompt_id])
        if not client.queue().is_running(prompt_id):
            return
    _interrupt(client, prompt_id)


def cancel(
    job: Job, finisher: Finisher, client: comfyui.ComfyUIClient, fleet: Fleet | None = None
) -> str:
    """Cancel one job wherever it is; returns where it was ("pending", "running", ...).

    In a cluster, a job another node holds is cancelled by that node (in its own ComfyUI):
    this asks it to and waits for it; REQUESTED when the answer does not come in time.
    """
    store = finisher.store
    if job.finished:
        raise already_finished(job)
    if fleet is not None and job.node != fleet.node:
        return fleet.cancel_elsewhere(job, CANCELLED_MESSAGE)
    queue = client.queue()
    if queue.is_pending(job.prompt_id):
        client.delete_pending([job.prompt_id])
        where = "pending"
        # It may have started between the two calls: then it is running and must be stopped.
        if client.queue().is_running(job.prompt_id):
            _interrupt(client, job.prompt_id)
            where = "running"
    elif queue.is_running(job.prompt_id):
        _interrupt(client, job.prompt_id)
        where = "running"
    elif not job.submitted:
        where = "not submitted"
    else:
        # Neither queued nor running: it just finished, or ComfyUI lost it.
        if settle_from_history(finisher, client, job.prompt_id):
            raise already_finished(store.get(job.id))
        where = "unknown to ComfyUI"
    if not finisher.finish(job, JobStatus.CANCELLED, error=CANCELLED_MESSAGE):
        ended = store.get(job.id)
        # The tracker may settle the interruption asked for above (ComfyUI's
        # execution_interrupted) before this line does: that is this cancellation, done.
        if not (where == "running" and ended is not None and ended.status == JobStatus.CANCELLED):
            raise already_finished(ended)
    log.info("job %s cancelled (%s)", job.id, where)
    return where


def clear(
    finisher: Finisher,
    client: comfyui.ComfyUIClient,
    include_running: bool,
    fleet: Fleet | None = None,
    owner: str | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Cancel every pending job of the sidecar (and the running ones if asked), or only the
    jobs of one owner (an API key that is not admin).

    Returns (cancelled job ids, job ids left running, job ids whose node was asked to cancel
    them: a cluster's other nodes). Prompts that other ComfyUI clients queued are not touched.
    """
    jobs = [job for job in finisher.store.unfinished() if owner is None or job.owner == owner]
    return cancel_many(jobs, finisher, client, include_running, fleet)


def cancel_many(
    jobs: list[Job],
    finisher: Finisher,
    client: comfyui.ComfyUIClient,
    include_running: bool,
    fleet: Fleet | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Cancel these unfinished jobs with one look at ComfyUI's queue (a batch, the queue).

    Returns (cancelled job ids, job ids left running, job ids another node was asked to
    cancel).
    """
    jobs = [j for j in jobs if not j.finished]
    cancelled: list[str] = []
    requested: list[str] = []
    if fleet is not None:
        # The jobs this node does not hold: waiting ones at once, the others by their nodes.
        elsewhere = [j for j in jobs if j.node != fleet.node]
        cancelled, requested = fleet.cancel_all_elsewhere(elsewhere, include_running)
        jobs = [j for j in jobs if j.node == fleet.node]
    if not jobs:
        return cancelled, [], requested
    queue = client.queue()
    # A job in neither list has just finished (or was lost): the tracker settles it.
    to_delete = [j for j in jobs if queue.is_pending(j.prompt_id) or not j.submitted]
    if to_delete:
        client.delete_pending([j.prompt_id for j in to_delete if j.prompt_id])
    left = []
    for job in to_delete:
        if finisher.finish(job, JobStatus.CANCELLED, error=CANCELLED_MESSAGE):
            cancelled.append(job.id)
    for job in (j for j in jobs if queue.is_running(j.prompt_id)):
        if include_running and _interrupt(client, job.prompt_id):
            if finisher.finish(job, JobStatus.CANCELLED, error=CANCELLED_MESSAGE):
                cancelled.append(job.id)
        else:
            left.append(job.id)
    return cancelled, left, requested
