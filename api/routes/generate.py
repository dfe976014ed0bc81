"""POST /api/generate: a prompt in, a queued job out (202)."""

from flask import Blueprint, jsonify, request, url_for

from api import generation, jobs
from api.errors import bad_request
from api.services import services

bp = Blueprint("generate", __name__)


@bp.post("/api/generate")
def generate():
    body = request.get_json(silent=True)
    if body is None:
        raise bad_request("Request body must be JSON (Content-Type: application/json)")
    s = services()
    job, partial = generation.submit(
        body,
        s.workflows,
        s.store,
        s.client,
        s.client_id,
        s.config.default_workflow,
        default_loras=s.config.default_loras,
        settings=s.config.workflow_settings,
    )
    status_url = url_for("status.job_status", job_id=job["id"])
    payload = {
        "job_id": job["id"],
        "prompt_id": job["prompt_id"],
        "status": jobs.JobStatus.QUEUED.value,
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
    return jsonify(payload), 202, {"Location": status_url}
