"""The queue: what ComfyUI runs and holds, the sidecar's unfinished jobs, and cancelling."""

from flask import Blueprint, jsonify, request

from api import auth, cancellation, sidecar, tenancy
from api.auth import requires
from api.comfyui import QueueSnapshot
from api.exceptions import ComfyUIError
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
                "others": obj(
                    {"queue_pending": INTEGER, "queue_running": INTEGER, "jobs": INTEGER},
                    description="Keys that are not admin: how many prompts and jobs of others"
                    " wait and run (they are not listed)",
                ),
                "nodes": {"type": "object", "additionalProperties": OBJECT},
            },
            optional=("comfyui_error", "others", "nodes"),
        )
    },
    description="Answers from the sidecar's records when ComfyUI is down (comfyui: unreachable)."
    " A key that is not admin sees its own jobs and prompts, and counts of the others. In a"
    " cluster, the shared queue of every node, from the job store (comfyui: cluster), with"
    " running and pending counts per node (for admin keys).",
)
def queue():
    s = sidecar.current()
    caller = auth.caller()
    if s.fleet is not None:
        jobs = s.store.unfinished()
        contract, places, per_node = s.fleet.shared_queue(jobs)
        snapshot = QueueSnapshot.from_answer(contract)
        view = tenancy.queue_view(snapshot, jobs, caller, places)
        body = _queue_body(view, "cluster")
        if caller.sees_all:
            body["nodes"] = per_node
        return jsonify(body)
    comfy_state, error = "connected", None
    try:
        snapshot = s.client.queue()
    except ComfyUIError as exc:
        # The sidecar's own jobs are still known; say that ComfyUI's side is not.
        snapshot = QueueSnapshot()
        comfy_state, error = "unreachable", exc.message
    view = tenancy.queue_view(snapshot, s.store.unfinished(), caller)
    body = _queue_body(view, comfy_state)
    if error:
        body["comfyui_error"] = error if caller.sees_server_paths else "ComfyUI not responding"
    return jsonify(body)


def _queue_body(view: tenancy.QueueView, comfy_state: str) -> dict:
    body = {
        "queue": {"queue_pending": view.pending, "queue_running": view.running},
        "jobs": {job.id: job.to_queue_entry(position) for job, position in view.jobs},
        "total_jobs": len(view.jobs),
        "comfyui": comfy_state,
    }
    if view.others is not None:
        body["others"] = view.others
    return body


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
    job = tenancy.job_of(s.store, auth.caller(), job_id)
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
@requires("generate")
@operation(
    "Cancel every pending job of the sidecar (and the running one with include_running); a"
    " key that is not admin cancels its own jobs only",
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
    owner = auth.caller().owner_filter
    cancelled, left, requested = cancellation.clear(
        s.finisher, s.client, include_running, s.fleet, owner
    )
    body = {
        "status": "success",
        "message": "Queue cleared",
        "cancelled": cancelled,
        "still_running": left,
    }
    if s.fleet is not None:
        body["requested"] = requested  # other nodes' jobs: those nodes were asked to cancel
    return jsonify(body)
