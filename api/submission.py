"""Turning a request into a job: the one submission pipeline.

Both kinds of request end in `enqueue`:
  - a generate request (POST /api/generate) names a workflow and its parameters; the graph is
    rendered and checked by api/graphs/prepare.py;
  - a raw graph (POST /api/workflows/execute) is sent as given, with `priority`, `metadata`
    and `timeout_minutes`.

`enqueue` writes the job row first (with the prompt_id the sidecar asks ComfyUI to use, and the
job id in the prompt's extra_data), then sends POST /prompt, so a sidecar that dies mid-submit
leaves a trace the tracker can match in ComfyUI's queue or history. If ComfyUI refuses the graph
or cannot be reached, the row is removed: the client gets the error, and no phantom job stays
queued. POST /prompt is never retried: a retry can run the work twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from jsonschema import Draft202012Validator

from api import comfyui, outputs, placement, webhooks
from api.exceptions import (
    ComfyUIError,
    ComfyUITimeout,
    ComfyUIUnreachable,
    DuplicateIdempotencyKey,
    IdempotencyKeyReused,
    InvalidGraph,
    InvalidRequest,
    SubmissionUnconfirmed,
    TooManyJobs,
    UnknownWorkflow,
    WebhooksDisabled,
    WorkflowError,
)
from api.graphs import detect, edit
from api.graphs.manifest import check_graph
from api.graphs.params import ImagesParam
from api.graphs.prepare import prepare
from api.graphs.workflow import REQUEST_FIELDS, WEBHOOK_FIELDS
from api.job import UNFINISHED, Job
from api.jobstore import JobStore
from api.sidecar import Sidecar
from api.tenancy import OPERATOR, Caller

log = logging.getLogger(__name__)

RAW_WORKFLOW_NAME = "(raw graph)"
METADATA_MAX_BYTES = 16 * 1024
# The body of POST /api/workflows/execute (also its schema in the OpenAPI document).
RAW_SCHEMA = {
    "type": "object",
    "properties": {
        "workflow": {
            "type": "object",
            "minProperties": 1,
            "description": "An API-format graph, as ComfyUI's 'Save (API Format)' writes it.",
        },
        "priority": {"enum": ["normal", "high"], "description": "high: front of the queue."},
        "metadata": {"type": "object", "description": "Stored and returned with the job."},
        "timeout_minutes": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "Deadline from submission; past it the job is stopped and fails"
            " (at most JOB_TIMEOUT_MINUTES).",
        },
        **WEBHOOK_FIELDS,
    },
    "required": ["workflow"],
    "additionalProperties": False,
}
_RAW_VALIDATOR = Draft202012Validator(RAW_SCHEMA)


def with_timeout_cap(schema: dict, max_minutes: float) -> dict:
    """A body schema whose timeout_minutes says the operator's cap (for the document)."""
    properties = dict(schema["properties"])
    properties["timeout_minutes"] = {**properties["timeout_minutes"], "maximum": max_minutes}
    return {**schema, "properties": properties}


@dataclass
class Submission:
    """What submitting answered: the job, ComfyUI's partial node_errors, and whether an
    earlier request with the same Idempotency-Key made the job."""

    job: Job
    node_errors: dict = field(default_factory=dict)
    replayed: bool = False


def request_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _replay(existing: Job, body: dict) -> Submission:
    """The answer to a retried request with a known Idempotency-Key: the same job."""
    if existing.request_hash != request_hash(body):
        raise IdempotencyKeyReused(
            "Idempotency-Key was already used for a different request", job_id=existing.id
        )
    return Submission(existing, replayed=True)


def check_idempotency_key(key: str) -> None:
    if not 1 <= len(key) <= 128 or not key.isprintable():
        raise InvalidRequest("Idempotency-Key must be 1 to 128 printable characters")


def generate(
    body: object,
    s: Sidecar,
    idempotency_key: str | None = None,
    caller: Caller = OPERATOR,
) -> Submission:
    """Validate a generate request, render its workflow's graph and queue it as the caller's."""
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object")
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
        # Per API key: another key's job under the same Idempotency-Key is none of this one's.
        existing = s.store.find_by_idempotency_key(idempotency_key, caller.name)
        if existing is not None:
            return _replay(existing, body)
    check_capacity(s, caller)
    job = build_job(body, s, caller)
    job.idempotency_key = idempotency_key
    return enqueue(s, job)


def build_job(body: dict, s: Sidecar, caller: Caller = OPERATOR) -> Job:
    """A generate request checked and its graph rendered: the job to queue (not stored yet).
    Raises the request's errors; batches call it for every item before queueing any."""
    name = body.get("workflow") or s.config.default_workflow
    if not isinstance(name, str):
        raise InvalidRequest("workflow must be of type string", {"field": "workflow"})
    workflow = s.workflows.get(name)
    if workflow is None:
        reason = s.workflows.reason_invalid(name)
        if reason:
            raise InvalidRequest(
                f"Workflow '{name}' is not usable: {reason}", {"field": "workflow"}
            )
        names = s.workflows.names()
        raise UnknownWorkflow(
            f"Unknown workflow: {name} (available: {', '.join(names) or 'none'})",
            {"field": "workflow", "allowed": names},
        )
    check_timeout(body, s)
    values, notes, graph = prepare(
        body,
        workflow,
        s.store,
        s.client,
        default_loras=s.config.default_loras,
        settings=s.config.workflow_settings,
        caller=caller,
        # In a cluster, a workflow this node's ComfyUI cannot run is checked by the node that
        # can (and claims it); a job no live node can run waits, saying so in its status.
        check=s.fleet is None or s.fleet.can_run(workflow.name),
    )
    # In a cluster, a job that loads an uploaded image or an earlier result runs on the node
    # whose ComfyUI has that file.
    pinned = None
    if s.fleet is not None:
        inputs = [
            value
            for name, param in workflow.params.items()
            if isinstance(param, ImagesParam)
            for value in values.get(name) or []
        ]
        pinned = placement.pinned_node(inputs, s.store)
    options = {k: body[k] for k in REQUEST_FIELDS if k in body and k != "workflow"}
    if options.get("filename"):
        options["save_to_disk"] = True
    check_webhook(options, s)
    steps = values.get("steps")
    return Job.new(
        id=str(uuid.uuid4()),
        client_id=s.client_id,
        workflow=workflow.name,
        prompt=str(values.get("prompt") or ""),
        graph=graph,
        params=values,
        notes=notes,
        options=options,
        # Known from the start, so a queued job reports step 0 of N, not None of None.
        total_steps=steps if isinstance(steps, int) else None,
        request_hash=request_hash(body),
        owner=caller.name,
        pinned_node=pinned,
    )


def execute_graph(body: object, s: Sidecar, caller: Caller = OPERATOR) -> Submission:
    """Check a raw API-format graph and queue it as a tracked job of the caller's."""
    body = _check_raw_body(body)
    check_timeout(body, s)
    check_capacity(s, caller)
    try:
        graph = check_graph(body["workflow"], "workflow")
    except WorkflowError as exc:
        message = str(exc).replace("workflow.json", "workflow")
        raise InvalidGraph(message, {"field": "workflow"}) from None
    options: dict[str, Any] = {"raw_graph": True, "priority": body.get("priority", "normal")}
    for key in ("metadata", "timeout_minutes", *WEBHOOK_FIELDS):
        if body.get(key) is not None:
            options[key] = body[key]
    check_webhook(options, s)
    s.client.check_node_classes(graph)
    return enqueue(
        s,
        Job.new(
            id=str(uuid.uuid4()),
            client_id=s.client_id,
            workflow=RAW_WORKFLOW_NAME,
            prompt=detect.prompt_text(graph),
            graph=graph,
            options=options,
            total_steps=detect.steps(graph),
            owner=caller.name,
        ),
        front=options["priority"] == "high",
    )


def check_webhook(options: dict, s: Sidecar) -> None:
    """A request's webhook_url: only with a secret to sign with, and never to an address
    webhooks may not reach (checked again, after DNS, at every attempt)."""
    url = options.get("webhook_url")
    if url is None:
        return
    if not s.config.webhook_secret:
        raise WebhooksDisabled(
            "Webhooks are switched off on this server: set WEBHOOK_SECRET to sign them"
            " (docs/integrations.md)",
            {"field": "webhook_url"},
        )
    webhooks.check_url(url, s.outbox.sender.allowed)


def check_capacity(s: Sidecar, caller: Caller, adding: int = 1) -> None:
    # Both are approximate across workers (a few may pass at once); they exist to push back on
    # runaway clients, not to count exactly.
    unfinished = s.store.count(UNFINISHED)
    if unfinished + adding > s.config.max_unfinished_jobs:
        raise TooManyJobs(
            f"Too many unfinished jobs ({unfinished}, limit {s.config.max_unfinished_jobs}):"
            " retry later",
            retry_after=5,
        )
    if caller.keyed:
        limit = s.config.max_unfinished_jobs_per_key
        mine = s.store.count(UNFINISHED, owner=caller.name)
        if mine + adding > limit:
            raise TooManyJobs(
                f"This API key has {mine} unfinished jobs, as many as one key may have"
                f" (MAX_UNFINISHED_JOBS_PER_KEY={limit}): retry when some have finished",
                retry_after=5,
            )


def check_timeout(body: dict, s: Sidecar) -> None:
    """A client may shorten a job's deadline, never lengthen it past the operator's."""
    value = body.get("timeout_minutes")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return  # absent, or a wrong type that the body's schema reports
    limit = s.config.job_timeout_minutes
    if value > limit:
        raise InvalidRequest(
            f"timeout_minutes must be at most {limit:g} (JOB_TIMEOUT_MINUTES; got"
            f" {str(value)[:40]})",
            {
                "field": "timeout_minutes",
                "allowed": {"type": "number", "exclusiveMinimum": 0, "maximum": limit},
                "received": value,
            },
        )


def _check_raw_body(body: object) -> dict:
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object")
    fields = list(RAW_SCHEMA["properties"])
    for error in sorted(_RAW_VALIDATOR.iter_errors(body), key=lambda e: list(e.absolute_path)):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties":
            extra = sorted(set(body) - set(fields))
            raise InvalidRequest(
                f"Unknown field: {extra[0]} (accepted: {', '.join(fields)})",
                {"field": extra[0], "allowed_fields": fields},
            )
        if error.validator == "required":
            raise InvalidRequest(
                "Missing required field: workflow (an API-format graph, as ComfyUI's 'Save (API"
                " Format)' writes it)",
                {"field": "workflow"},
            )
        name = str(path[0]) if path else None
        raise InvalidRequest(f"{name}: {error.message}", {"field": name})
    metadata = body.get("metadata")
    if metadata is not None and len(json.dumps(metadata)) > METADATA_MAX_BYTES:
        raise InvalidRequest(
            f"metadata is larger than {METADATA_MAX_BYTES // 1024} KB", {"field": "metadata"}
        )
    return body


def enqueue(s: Sidecar, job: Job, front: bool = False) -> Submission:
    """Write the job row, then POST /prompt (see the module docstring for why in that order).

    In a cluster the row is written queued, and this node sends it at once only when its
    ComfyUI has room (the row is written claimed by it); otherwise the first node with room
    claims it.
    """
    minutes = job.options.get("timeout_minutes") or s.config.job_timeout_minutes
    job.deadline = job.created_at + minutes * 60
    job.prompt_id = s.client.new_prompt_id()
    try:
        if s.fleet is not None:
            job = s.fleet.create(job)  # as written: claimed by this node when it has room
        else:
            s.store.create(job)
    except DuplicateIdempotencyKey:
        # The same key arrived twice at once: the other request created the job.
        twin = s.store.find_by_idempotency_key(job.idempotency_key, job.owner)
        return Submission(twin, replayed=True)
    if s.fleet is not None and job.node is None:
        s.store.notify_queue(s.fleet.node)  # for the first other node with room
        s.metrics.job_created(job)
        return Submission(job)
    try:
        folder = outputs.sending_folder(s.config, s.fleet)
        done = send(s.client, s.store, s.client_id, job, front, folder)
    except ComfyUITimeout:
        # ComfyUI may have queued it before the answer was lost: keep the row, so the tracker
        # finds it (by prompt_id or the job id in extra_data) and nothing runs untracked.
        s.metrics.job_created(job)
        raise SubmissionUnconfirmed(
            "ComfyUI did not confirm the job in time; it may still run: follow its status",
            job_id=job.id,
        ) from None
    except ComfyUIUnreachable:
        if s.fleet is not None and s.fleet.release(job):
            s.metrics.job_created(job)
            return Submission(s.store.get(job.id) or job)  # another node can run it
        s.store.discard(job.id)
        raise
    except ComfyUIError:
        s.store.discard(job.id)
        raise
    s.metrics.job_created(job)
    return done


def send(
    client: comfyui.ComfyUIClient,
    store: JobStore,
    client_id: str,
    job: Job,
    front: bool = False,
    output_folder: str = "",
) -> Submission:
    """POST /prompt for a job whose row is written, with the job id in its extra_data; never
    retried (a retried POST /prompt can run the work twice). With output_folder (a cluster
    node's, OUTPUT_SUBFOLDER's: outputs.save_folder), its files are saved in that folder of
    the output folder."""
    submitted = client.submit(
        edit.in_output_folder(job.graph, output_folder),
        client_id,
        prompt_id=job.prompt_id,
        front=front,
        extra_data={comfyui.JOB_MARKER: job.id},
    )
    if store.mark_submitted(
        job.id, submitted.prompt_id, planned=job.prompt_id, number=submitted.number
    ):
        log.info("job %s queued as prompt %s (%s)", job.id, submitted.prompt_id, job.workflow)
        # Confirmed under the prompt_id it was sent with: nothing else changed the row.
        confirmed = replace(job, prompt_id=submitted.prompt_id, queue_number=submitted.number)
        return Submission(confirmed, submitted.node_errors)
    current = store.get(job.id) or job
    if current.prompt_id != submitted.prompt_id:
        # Neither confirmed here nor adopted by the reconciler (which finds an unconfirmed
        # prompt by its marker): the job was taken back while the POST was on its way, so this
        # run is not its own; the node's orphan check stops the prompt.
        log.warning("job %s was taken back while it was sent as %s", job.id, submitted.prompt_id)
    return Submission(current, submitted.node_errors)
