"""Jobs for tests that work on a store directly."""

from __future__ import annotations

from typing import Any

from api.job import Job
from api.jobstore import JobStore

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}


def add_job(
    store: JobStore,
    job_id: str = "j1",
    prompt_id: str | None = "p1",
    *,
    submitted: bool = False,
    **fields: Any,
) -> Job:
    """Create a queued job (ComfyUI's submission confirmed when `submitted`)."""
    values: dict[str, Any] = {
        "client_id": "c",
        "workflow": "wf",
        "prompt": "p",
        "graph": GRAPH,
        "params": {},
        **fields,
    }
    store.create(Job.new(id=job_id, prompt_id=prompt_id, **values))
    if submitted:
        store.mark_submitted(job_id, prompt_id)
    return store.get(job_id)
