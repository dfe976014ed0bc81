"""Job deadlines: a job sent with `timeout_minutes` ends failed once that much time has passed.

The time counts from when the job was accepted (queue wait included). The tracker checks it on
every reconciliation: the job is marked failed first (so the interruption ComfyUI then reports
does not turn it into "cancelled"), then ComfyUI is told to stop it: interrupted when running,
removed from the queue when pending.
"""

from __future__ import annotations

import logging

from api import comfyui
from api.jobs import JobStatus, JobStore

log = logging.getLogger(__name__)


def deadline(job: dict) -> float | None:
    minutes = (job.get("options") or {}).get("timeout_minutes")
    if not isinstance(minutes, int | float) or isinstance(minutes, bool) or minutes <= 0:
        return None
    return job["created_at"] + minutes * 60


def expired(job: dict, now: float) -> bool:
    due = deadline(job)
    return due is not None and now >= due


def stop(
    store: JobStore,
    client: comfyui.ComfyUIClient,
    job: dict,
    running: set[str],
    pending: set[str],
) -> bool:
    """End an expired job: failed in the store, then stopped in ComfyUI. False if already final."""
    minutes = job["options"]["timeout_minutes"]
    if not store.finish(
        job["id"],
        JobStatus.FAILED,
        error=f"Timed out: not finished within timeout_minutes={minutes:g}; ComfyUI was told to"
        " stop it",
        error_details={"type": "timeout", "timeout_minutes": minutes},
    ):
        return False
    prompt_id = job["prompt_id"]
    try:
        if prompt_id in running:
            client.interrupt(prompt_id)
        elif prompt_id in pending:
            client.delete_pending([prompt_id])
    except comfyui.ComfyUIError as exc:
        log.warning(
            "job %s timed out, but ComfyUI could not be told to stop it: %s", job["id"], exc
        )
    log.info("job %s timed out after %g minutes", job["id"], minutes)
    return True
