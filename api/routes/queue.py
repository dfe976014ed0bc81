"""The queue: what ComfyUI runs and holds, the sidecar's unfinished jobs, and cancelling."""

from flask import Blueprint, jsonify, request

from api import cancellation, comfyui
from api.auth import requires
from api.errors import bad_request, not_found
from api.services import services

bp = Blueprint("queue", __name__)


@bp.get("/api/queue")
def queue():
    s = services()
    jobs = s.store.unfinished()
    comfy_state, error = "connected", None
    try:
        raw = s.client.queue()
    except comfyui.ComfyUIError as exc:
        # The sidecar's own jobs are still known; say that ComfyUI's side is not.
        raw = {"queue_running": [], "queue_pending": []}
        comfy_state, error = "unreachable", str(exc)
    running = [[item[0], item[1]] for item in raw["queue_running"]]
    pending = [[item[0], item[1]] for item in raw["queue_pending"]]
    position = {item[1]: 0 for item in running}
    position.update({item[1]: n for n, item in enumerate(pending, start=1)})
    body = {
        "queue": {"queue_pending": pending, "queue_running": running},
        "jobs": {
            job["id"]: {
                "job_id": job["id"],
                "status": job["status"],
                "prompt": job["prompt"],
                "progress": round(job["progress"], 4),
                "prompt_id": job["prompt_id"],
                "queue_position": position.get(job["prompt_id"]),
                "workflow": job["workflow"],
            }
            for job in jobs
        },
        "total_jobs": len(jobs),
        "comfyui": comfy_state,
    }
    if error:
        body["comfyui_error"] = error
    return jsonify(body)


@bp.delete("/api/queue/<job_id>")
@requires("generate")
def cancel(job_id: str):
    s = services()
    job = s.store.get(job_id)
    if job is None:
        raise not_found()
    where = cancellation.cancel(job, s.store, s.client, s.on_finished)
    return jsonify(status="success", message=f"Job {job_id} cancelled", job_id=job_id, was=where)


@bp.post("/api/queue/clear")
@requires("admin")
def clear():
    body = request.get_json(silent=True) or {}
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    include_running = body.get("include_running", request.args.get("include_running"))
    if isinstance(include_running, str):
        include_running = include_running.lower() in ("1", "true", "yes")
    if include_running is not None and not isinstance(include_running, bool):
        raise bad_request("include_running must be a boolean", {"field": "include_running"})
    s = services()
    cancelled, left = cancellation.clear(s.store, s.client, bool(include_running))
    return jsonify(
        status="success", message="Queue cleared", cancelled=cancelled, still_running=left
    )
