"""Turning a generate request into a job: validate, render, store, submit to ComfyUI."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from api import comfyui, engine
from api.errors import ApiError, bad_request
from api.jobs import JobStore
from api.loras import LoraSpec
from api.workflows import REQUEST_FIELDS, WorkflowLibrary

log = logging.getLogger(__name__)


def submit(
    body: object,
    library: WorkflowLibrary,
    store: JobStore,
    client: comfyui.ComfyUIClient,
    client_id: str,
    default_workflow: str,
    default_loras: tuple[LoraSpec, ...] = (),
    settings: Mapping[str, Any] | None = None,
) -> tuple[dict, dict]:
    """Create and submit a job; returns (job row, ComfyUI's partial node_errors)."""
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    name = body.get("workflow") or default_workflow
    if not isinstance(name, str):
        raise bad_request("workflow must be of type string", {"field": "workflow"})
    workflow = library.get(name)
    if workflow is None:
        reason = library.reason_invalid(name)
        if reason:
            raise bad_request(f"Workflow '{name}' is not usable: {reason}", {"field": "workflow"})
        raise bad_request(
            f"Unknown workflow: {name} (available: {', '.join(library.names()) or 'none'})",
            {"field": "workflow", "allowed": library.names()},
            code="unknown_workflow",
        )
    values, notes, graph = engine.prepare(
        body, workflow, store, client, default_loras=default_loras, settings=settings
    )
    options = {k: body[k] for k in REQUEST_FIELDS if k in body and k != "workflow"}
    if options.get("filename"):
        options["save_to_disk"] = True
    return enqueue(
        store,
        client,
        client_id,
        workflow=workflow.name,
        prompt=str(values.get("prompt") or ""),
        params=values,
        notes=notes,
        graph=graph,
        options=options,
    )


def enqueue(
    store: JobStore,
    client: comfyui.ComfyUIClient,
    client_id: str,
    *,
    workflow: str,
    prompt: str,
    params: dict,
    notes: dict,
    graph: dict,
    options: dict,
    front: bool = False,
) -> tuple[dict, dict]:
    """Write the job row, then POST /prompt; returns (job row, ComfyUI's partial node_errors).

    The row is written before POST /prompt (with the prompt_id we ask ComfyUI to use), so a
    sidecar that dies mid-submit leaves a trace the tracker can settle. If ComfyUI refuses the
    graph or cannot be reached, the row is removed: the client gets the error, and no phantom
    job stays queued.
    """
    job_id = str(uuid.uuid4())
    wanted_prompt_id = client.new_prompt_id()
    job = store.create(
        job_id=job_id,
        client_id=client_id,
        workflow=workflow,
        prompt=prompt,
        params=params,
        notes=notes,
        graph=graph,
        prompt_id=wanted_prompt_id,
        options=options,
    )
    try:
        submitted = client.submit(graph, client_id, prompt_id=wanted_prompt_id, front=front)
    except comfyui.ComfyUITimeout:
        # ComfyUI may have queued it before the answer was lost: keep the row, so the tracker
        # finds it by prompt_id (or fails it after a grace period) and nothing runs untracked.
        raise ApiError(
            504,
            "ComfyUI did not confirm the job in time; it may still run: follow its status",
            "comfyui_timeout",
            job_id=job_id,
        ) from None
    except comfyui.ComfyUIError:
        store.delete(job_id)
        raise
    store.mark_submitted(job_id, submitted.prompt_id)
    job = store.get(job_id) or job
    log.info("job %s queued as prompt %s (%s)", job_id, submitted.prompt_id, workflow)
    return job, submitted.node_errors
