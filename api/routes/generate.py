"""POST /api/generate: a prompt in, a queued job out (202), or with ?wait= the finished job
(api/routes/awaiting.py)."""

from flask import Blueprint, request, url_for

from api import auth, sidecar, submission
from api.auth import requires
from api.graphs.workflow import REQUEST_FIELDS
from api.job import STATUS_WORD, JobStatus
from api.openapi import COMFYUI_ERRORS, DocumentContext, operation
from api.routes import awaiting
from api.routes.bodies import json_body
from api.schemas import ANY, BOOLEAN, OBJECT, STRING, nullable, obj

bp = Blueprint("generate", __name__)

ACCEPTED = obj(
    {
        "job_id": STRING,
        "prompt_id": nullable(STRING),
        "status": STATUS_WORD,
        "prompt": STRING,
        "message": STRING,
        "workflow": STRING,
        "seed": ANY,
        "parameters": OBJECT,
        "ignored_fields": OBJECT,
        "status_url": STRING,
        "comfyui_node_errors": OBJECT,
        "replayed": BOOLEAN,
    },
    optional=("comfyui_node_errors", "replayed"),
)


def request_body(context: DocumentContext) -> dict:
    """Every field any workflow accepts, with the default workflow's ranges first."""
    properties: dict = {}
    library = context.workflows
    names = [context.default_workflow, *library.names()]
    for name in dict.fromkeys(names):
        workflow = library.get(name)
        if workflow is not None:
            for field, schema in workflow.request_schema()["properties"].items():
                properties.setdefault(field, schema)
    properties.update(REQUEST_FIELDS)
    properties.setdefault("prompt", STRING)
    # The operator's JOB_TIMEOUT_MINUTES is the longest deadline a request may ask for.
    schema = submission.with_timeout_cap({"properties": properties}, context.max_timeout_minutes)
    return {
        "type": "object",
        "required": ["prompt"],
        "properties": schema["properties"],
        "description": "The fields of the chosen workflow (GET /api/workflows/{name}); "
        "unknown fields are a 400.",
    }


@bp.post("/api/generate")
@requires("generate")
@operation(
    "Queue an image job from a prompt (and the workflow's other parameters)",
    {
        200: awaiting.COMPLETED,
        202: ("Queued; follow status_url (also in Location)", ACCEPTED, "application/json"),
    },
    errors=(400, *awaiting.ERRORS, 413, 422, *COMFYUI_ERRORS),
    parameters=[
        awaiting.WAIT_PARAM,
        {
            "name": "Idempotency-Key",
            "in": "header",
            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
            "description": "A retry with the same key and body answers with the same job",
        },
    ],
    body=request_body,
)
def generate():
    with awaiting.waiting() as wait:
        done = submission.generate(
            json_body(), sidecar.current(), request.headers.get("Idempotency-Key"), auth.caller()
        )
        job = done.job
        status_url = url_for("status.job_status", job_id=job.id)
        payload = {
            "job_id": job.id,
            "prompt_id": job.prompt_id,
            # A replayed request answers with the job's current status.
            "status": job.status.value if done.replayed else JobStatus.QUEUED.value,
            "prompt": job.prompt,
            "message": "Image generation queued",
            "workflow": job.workflow,
            "seed": job.seed,
            "parameters": job.params,
            "ignored_fields": job.notes,
            "status_url": status_url,
        }
        if done.node_errors:
            payload["comfyui_node_errors"] = done.node_errors
        if done.replayed:
            payload["replayed"] = True
        return awaiting.answer(job, payload, wait)
