"""The queue: what ComfyUI runs and holds, the sidecar's unfinished jobs, and cancelling."""

from flask import Blueprint, jsonify, request

from api import cancellation, sidecar
from api.auth import requires
from api.comfyui import QueueSnapshot
from api.exceptions import ComfyUIError, NotFound
from api.routes.bodies import flag, json_object

bp = Blueprint("queue", __name__)


@bp.get("/api/queue")
def queue():
    s = sidecar.current()
    jobs = s.store.unfinished()
    comfy_state, error = "connected", None
    try:
        snapshot = s.client.queue()
    except ComfyUIError as exc:
        # The sidecar's own jobs are still known; say that ComfyUI's side is not.
        snapshot = QueueSnapshot()
        comfy_state, error = "unreachable", exc.message
    body = {
        "queue": snapshot.as_contract(),
        "jobs": {job.id: job.to_queue_entry(snapshot.position_of(job.prompt_id)) for job in jobs},
        "total_jobs": len(jobs),
        "comfyui": comfy_state,
    }
    if error:
        body["comfyui_error"] = error
    return jsonify(body)


@bp.delete("/api/queue/<job_id>")
@requires("generate")
def cancel(job_id: str):
    s = sidecar.current()
    job = s.store.get(job_id)
    if job is None:
        raise NotFound()
    where = cancellation.cancel(job, s.store, s.client, s.on_finished)
    return jsonify(status="success", message=f"Job {job_id} cancelled", job_id=job_id, was=where)


@bp.post("/api/queue/clear")
@requires("admin")
def clear():
    body = json_object(required=False)
    include_running = flag(
        body.get("include_running", request.args.get("include_running")), "include_running"
    )
    s = sidecar.current()
    cancelled, left = cancellation.clear(s.store, s.client, include_running)
    return jsonify(
        status="success", message="Queue cleared", cancelled=cancelled, still_running=left
    )
