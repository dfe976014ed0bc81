"""POST /api/generate: a prompt in, a queued job out (202)."""

from flask import Blueprint, jsonify, request, url_for

from api import generation, jobs
from api.auth import requires
from api.errors import bad_request
from api.services import services

bp = Blueprint("generate", __name__)


@bp.post("/api/generate")
@requires("generate")
def generate():
    body = request.get_json(silent=True)
    if body is None:
        raise bad_request("Request body must be JSON (Content-Type: application/json)")
    job, partial, replayed = generation.submit(
        body, services(), request.headers.get("Idempotency-Key")
    )
    status_url = url_for("status.job_status", job_id=job["id"])
    payload = {
        "job_id": job["id"],
        "prompt_id": job["prompt_id"],
        # A replayed request answers with the job's current status.
        "status": job["status"] if replayed else jobs.JobStatus.QUEUED.value,
        "prompt": job["prompt"],
        "message": "Image generation queued",
        "workflow": job["workflow"],
        "seed": job["params"].get("seed"),
        "parameters": job["params"],
        "ignored_fields": job["notes"],
        "status_url": status_url,
    }
    if partial:
        payload["comfyui_node_errors"] = partial
    if replayed:
        payload["replayed"] = True
    return jsonify(payload), 202, {"Location": status_url}
