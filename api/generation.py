"""Turning a generate request into a job: validate, render, store, submit to ComfyUI."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
import uuid

from api import comfyui, engine
from api.errors import ApiError, bad_request
from api.jobs import UNFINISHED
from api.services import Services
from api.workflows import REQUEST_FIELDS

log = logging.getLogger(__name__)


def _request_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _replay(existing: dict, body: dict) -> tuple[dict, dict, bool]:
    """The answer to a retried request with a known Idempotency-Key: the same job."""
    if existing["request_hash"] != _request_hash(body):
        raise ApiError(
            422,
            "Idempotency-Key was already used for a different request",
            "idempotency_key_reused",
            job_id=existing["id"],
        )
    return existing, {}, True


def submit(
    body: object, s: Services, idempotency_key: str | None = None
) -> tuple[dict, dict, bool]:
    """Create and submit a job; returns (job row, ComfyUI's partial node_errors, replayed).

    The row is written before POST /prompt (with the prompt_id we ask ComfyUI to use, and the
    job id in the prompt's extra_data), so a sidecar that dies mid-submit leaves a trace the
    tracker can match in ComfyUI's queue or history. If ComfyUI refuses the graph or cannot be
    reached, the row is removed: the client gets the error, and no phantom job stays queued.
    """
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    store, client = s.store, s.client
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 128 or not idempotency_key.isprintable():
            raise bad_request("Idempotency-Key must be 1 to 128 printable characters")
        existing = store.by_idempotency_key(idempotency_key)
        if existing is not None:
            return _replay(existing, body)
    name = body.get("workflow") or s.config.default_workflow
    if not isinstance(name, str):
        raise bad_request("workflow must be of type string", {"field": "workflow"})
    workflow = s.workflows.get(name)
    if workflow is None:
        reason = s.workflows.reason_invalid(name)
        if reason:
            raise bad_request(f"Workflow '{name}' is not usable: {reason}", {"field": "workflow"})
        raise bad_request(
            f"Unknown workflow: {name} (available: {', '.join(s.workflows.names()) or 'none'})",
            {"field": "workflow", "allowed": s.workflows.names()},
            code="unknown_workflow",
        )
    unfinished = store.count(UNFINISHED)
    if unfinished >= s.config.max_unfinished_jobs:
        # Approximate across workers (a few may pass at once); it exists to push back on
        # runaway clients, not to count exactly.
        raise ApiError(
            429,
            f"Too many unfinished jobs ({unfinished}, limit {s.config.max_unfinished_jobs}):"
            " retry later",
            "too_many_jobs",
            headers={"Retry-After": "5"},
        )
    values, notes, graph = engine.prepare(
        body,
        workflow,
        store,
        client,
        default_loras=s.config.default_loras,
        settings=s.config.workflow_settings,
    )
    options = {k: body[k] for k in REQUEST_FIELDS if k in body and k != "workflow"}
    if options.get("filename"):
        options["save_to_disk"] = True
    return enqueue(
        s,
        workflow=workflow.name,
        prompt=str(values.get("prompt") or ""),
        params=values,
        notes=notes,
        graph=graph,
        options=options,
        idempotency_key=idempotency_key,
        request_hash=_request_hash(body),
    )


def enqueue(
    s: Services,
    *,
    workflow: str,
    prompt: str,
    params: dict,
    notes: dict,
    graph: dict,
    options: dict,
    front: bool = False,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> tuple[dict, dict, bool]:
    """Write the job row, then POST /prompt; returns (job row, partial node_errors, replayed).

    The row is written before POST /prompt (with the prompt_id we ask ComfyUI to use, and the
    job id in the prompt's extra_data), so a sidecar that dies mid-submit leaves a trace the
    tracker can match in ComfyUI's queue or history. If ComfyUI refuses the graph or cannot be
    reached, the row is removed: the client gets the error, and no phantom job stays queued.
    """
    store, client = s.store, s.client
    job_id = str(uuid.uuid4())
    wanted_prompt_id = client.new_prompt_id()
    minutes = options.get("timeout_minutes") or s.config.job_timeout_minutes
    try:
        job = store.create(
            job_id=job_id,
            client_id=s.client_id,
            workflow=workflow,
            prompt=prompt,
            params=params,
            notes=notes,
            graph=graph,
            prompt_id=wanted_prompt_id,
            options=options,
            deadline=time.time() + minutes * 60,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
    except sqlite3.IntegrityError:
        # The same key arrived twice at once: the other request created the job.
        existing = store.by_idempotency_key(idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return existing, {}, True
    try:
        submitted = client.submit(
            graph,
            s.client_id,
            prompt_id=wanted_prompt_id,
            front=front,
            extra_data={comfyui.JOB_MARKER: job_id},
        )
    except comfyui.ComfyUITimeout:
        # ComfyUI may have queued it before the answer was lost: keep the row, so the tracker
        # finds it (by prompt_id or the job id in extra_data) and nothing runs untracked.
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
    return job, submitted.node_errors, False
