"""What became of a prompt, from ComfyUI's record of it (its /history entry), and settling the
job accordingly."""

from __future__ import annotations

import logging
from collections.abc import Callable

from api import comfyui, rejections
from api.job import Job, JobStatus
from api.jobstore import JobStore

log = logging.getLogger(__name__)


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


def settle_from_history(
    store: JobStore,
    client: comfyui.ComfyUIClient,
    prompt_id: str,
    on_finished: Callable[[Job], None] | None = None,
) -> bool:
    """Finish a job from its /history entry; False if ComfyUI has none (yet)."""
    job = store.find_by_prompt(prompt_id)
    if job is None or job.finished:
        return False
    entry = client.history(prompt_id)
    if not entry:
        return False
    status, error, details = outcome_of(entry)
    outputs = collect_outputs(entry.get("outputs") or {})
    if store.finish(job.id, status, outputs, error, details, prompt_id=prompt_id):
        log.info("job %s %s (%d images)", job.id, status, len(outputs))
        if on_finished is not None:
            on_finished(store.get(job.id))
    return True
