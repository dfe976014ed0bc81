"""The queue: what ComfyUI runs and holds, the sidecar's unfinished jobs, and cancelling."""

from flask import Blueprint, jsonify, request

from api import cancellation, sidecar
from api.auth import requires
from api.comfyui import QueueSnapshot
from api.exceptions import ComfyUIError, NotFound
from api.job import QUEUE_ENTRY_SCHEMA
from api.openapi import COMFYUI_ERRORS, JOB_ID, operation, query_param
from api.routes.bodies import flag, json_object
from api.schemas import BOOLEAN, INTEGER, OBJECT, STRING, array, obj

bp = Blueprint("queue", __name__)

# [number, prompt_id] pairs
QUEUE_ITEMS = array({"type": "array", "items": {"type": ["number", "string"]}, "minItems": 2})
INCLUDE_RUNNING = {
    **BOOLEAN,
    "description": "Also stop the running job (default: it runs to the end)",
}


@bp.get("/api/queue")
@operation(
    "ComfyUI's queue ([number, prompt_id] pairs) and the sidecar's unfinished jobs",
    {
        200: obj(
            {
                "queue": obj({"queue_pending": QUEUE_ITEMS, "queue_running": QUEUE_ITEMS}),
                "jobs": {"type": "object", "additionalProperties": QUEUE_ENTRY_SCHEMA},
                "total_jobs": INTEGER,
                "comfyui": {"enum": ["connected", "unreachable", "cluster"]},
                "comfyui_error": STRING,
                "nodes": {"type": "object", "additionalProperties": OBJECT},
            },
            optional=("comfyui_error", "nodes"),
        )
    },
    description="Answers from the sidecar's records when ComfyUI is down (comfyui: unreachable)."
    " In a cluster, the shared queue of every node, from the job store (comfyui: cluster), with"
    " running and pending counts per node.",
)
def queue():
    s = sidecar.current()
    jobs = s.store.unfinished()
    if s.fleet is not None:
        contract, places, per_node = s.fleet.shared_queue(jobs)
        return jsonify(
            queue=contract,
            jobs={job.id: job.to_queue_entry(places[job.id]) for job in jobs},
            total_jobs=len(jobs),
            comfyui="cluster",
            nodes=per_node,
        )
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
@operation(
    "Cancel one job, pending or running; no other job is touched",
    {
        200: obj(
            {
                "status": {"const": "success"},
                "message": STRING,
                "job_id": STRING,
                "was": {**STRING, "description": "pending, running, ... (where it was)"},
            }
        ),
        202: (
            "In a cluster: the node running the job was asked to cancel it and has not yet",
            obj(
                {
                    "status": {"const": "pending"},
                    "message": STRING,
                    "job_id": STRING,
                    "was": {"const": "cancel requested"},
                }
            ),
            "application/json",
        ),
    },
    errors=(404, 409, *COMFYUI_ERRORS),
    parameters=[JOB_ID],
)
def cancel(job_id: str):
    s = sidecar.current()
    job = s.store.get(job_id)
    if job is None:
        raise NotFound()
    where = cancellation.cancel(job, s.finisher, s.client, s.fleet)
    if where == cancellation.REQUESTED:
        return jsonify(
            status="pending",
            message=f"Job {job_id} runs on node {job.node}, which was asked to cancel it; it"
            " ends cancelled when that node acts (or its lease lapses)",
            job_id=job_id,
            was=where,
        ), 202
    return jsonify(status="success", message=f"Job {job_id} cancelled", job_id=job_id, was=where)


@bp.post("/api/queue/clear")
@requires("admin")
@operation(
    "Cancel every pending job of the sidecar (and the running one with include_running)",
    {
        200: obj(
            {
                "status": {"const": "success"},
                "message": STRING,
                "cancelled": array(STRING),
                "still_running": array(STRING),
                "requested": array(STRING),
            },
            optional=("requested",),
        )
    },
    errors=(400, *COMFYUI_ERRORS),
    parameters=[query_param("include_running", INCLUDE_RUNNING)],
    body=obj({"include_running": INCLUDE_RUNNING}, optional=("include_running",)),
    body_required=False,
)
def clear():
    body = json_object(required=False)
    include_running = flag(
        body.get("include_running", request.args.get("include_running")), "include_running"
    )
    s = sidecar.current()
    cancelled, left, requested = cancellation.clear(s.finisher, s.client, include_running, s.fleet)
    body = {
        "status": "success",
        "message": "Queue cleared",
        "cancelled": cancelled,
        "still_running": left,
    }
    if s.fleet is not None:
        body["requested"] = requested  # other nodes' jobs: those nodes were asked to cancel
    return jsonify(body)
