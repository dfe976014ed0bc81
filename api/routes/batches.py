"""Batches: POST /api/batch, follow one (GET, ?wait=), its images as a zip, cancel it."""

from flask import Blueprint, Response, jsonify, request, stream_with_context, url_for

from api import auth, batches, sidecar
from api import batch as shapes
from api.auth import requires
from api.openapi import COMFYUI_ERRORS, operation, path_param, query_param
from api.routes.bodies import json_body, number_arg
from api.routes.generate import request_body
from api.routes.images import image_url
from api.schemas import OBJECT, STRING, array, obj

bp = Blueprint("batches", __name__)

BATCH_ID = path_param("batch_id", "The batch's id, as POST /api/batch answered it")


def batch_body(context) -> dict:
    """Either `jobs` (generate requests) or `prompts`, with shared generate fields beside."""
    item = request_body(context)
    shared = {**item, "required": []}
    return {
        "type": "object",
        "properties": {
            **shared["properties"],
            "jobs": {
                **array(OBJECT),
                "description": "Generate requests (each like POST "
                "/api/generate's body; the fields beside `jobs` are their defaults)",
            },
            "prompts": {
                **array(STRING),
                "description": "Prompts, each one job with the fields beside `prompts`",
            },
        },
        "description": '{"jobs": [...]} or {"prompts": [...]}, plus fields shared by every '
        "job (workflow, size, webhook_url...). Validated all or nothing: a bad item is a 400 "
        "naming its index, and nothing is queued.",
    }


@bp.post("/api/batch")
@requires("generate")
@operation(
    "Queue several jobs at once (all validated first; nothing is queued if one is bad)",
    {202: ("Queued; follow status_url", shapes.BATCH_ACCEPTED_SCHEMA, "application/json")},
    errors=(400, 403, 413, 422, *COMFYUI_ERRORS),
    parameters=[
        {
            "name": "Idempotency-Key",
            "in": "header",
            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
            "description": "A retry with the same key and body answers with the same batch",
        }
    ],
    body=batch_body,
)
def create_batch():
    body = json_body()
    done = batches.submit(
        body, sidecar.current(), request.headers.get("Idempotency-Key"), auth.caller()
    )
    status_url = url_for("batches.show_batch", batch_id=done.batch.id)
    payload = {
        "batch_id": done.batch.id,
        "status": shapes.overall_status(done.jobs) if done.replayed else "queued",
        "job_ids": [job.id for job in done.jobs],
        "total": len(done.jobs),
        "message": f"{len(done.jobs)} jobs queued",
        "status_url": status_url,
        "archive_url": url_for("batches.batch_archive", batch_id=done.batch.id),
    }
    if isinstance(body, dict) and isinstance(body.get("webhook_url"), str):
        payload["webhook_url"] = body["webhook_url"]
    if done.replayed:
        payload["replayed"] = True
    return jsonify(payload), 202, {"Location": status_url}


@bp.get("/api/batch/<batch_id>")
@operation(
    "A batch: counts per status, overall progress, each job's short status; ?wait= long-polls"
    " until every job is final",
    {200: shapes.BATCH_SCHEMA},
    errors=(400, 404, 429),
    parameters=[
        BATCH_ID,
        query_param(
            "wait",
            {"type": "number", "minimum": 0},
            "Seconds to wait for every job to be final (at most LONG_POLL_MAX)",
        ),
    ],
)
def show_batch(batch_id: str):
    s = sidecar.current()
    wait = number_arg("wait", 0, s.config.long_poll_max)
    caller = auth.caller()
    batch, jobs = batches.find(s.store, batch_id, caller)
    if wait:
        with s.watchers.slot(caller.name):
            jobs = batches.wait_final(s.store, batch, wait)
    return jsonify(shapes.aggregate(batch, jobs, image_url))


@bp.get("/api/batch/<batch_id>/archive")
@operation(
    "The batch's finished images as one zip (streamed; numbered in submission order)",
    {200: ("A zip archive", {"type": "string", "format": "binary"}, "application/zip")},
    errors=(404,),
    parameters=[BATCH_ID],
)
def batch_archive(batch_id: str):
    s = sidecar.current()
    _, jobs = batches.find(s.store, batch_id, auth.caller())
    chunks = batches.archive(jobs, s.config.comfyui_output_dir, s.storage)
    return Response(
        stream_with_context(chunks),
        mimetype="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="batch-{batch_id}.zip"',
            "X-Accel-Buffering": "no",
        },
    )


@bp.delete("/api/batch/<batch_id>")
@requires("generate")
@operation(
    "Cancel a batch: every unfinished job of it, pending or running",
    {
        200: obj(
            {
                "status": {"const": "success"},
                "message": STRING,
                "batch_id": STRING,
                "cancelled": array(STRING),
                "already_finished": array(STRING),
            }
        )
    },
    errors=(404, *COMFYUI_ERRORS),
    parameters=[BATCH_ID],
)
def cancel_batch(batch_id: str):
    s = sidecar.current()
    cancelled, final = batches.cancel(s, batch_id, auth.caller())
    return jsonify(
        status="success",
        message=f"Batch {batch_id} cancelled ({len(cancelled)} jobs)",
        batch_id=batch_id,
        cancelled=cancelled,
        already_finished=final,
    )
