"""POST /api/generate: a prompt in, a queued job out (202)."""

from flask import Blueprint, jsonify, request, url_for

from api import sidecar, submission
from api.auth import requires
from api.job import JobStatus
from api.routes.bodies import json_body

bp = Blueprint("generate", __name__)


@bp.post("/api/generate")
@requires("generate")
def generate():
    done = submission.generate(
        json_body(), sidecar.current(), request.headers.get("Idempotency-Key")
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
    return jsonify(payload), 202, {"Location": status_url}
