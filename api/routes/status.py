"""Where a job stands: GET /api/status/<job_id> (with an optional long poll) and its event
stream GET /api/status/<job_id>/events."""

import base64
import json

from flask import Blueprint, Response, jsonify, request, stream_with_context

from api import auth, job_watch, outputs, sidecar, status_cache, tenancy
from api.exceptions import UnsafePath
from api.openapi import JOB_ID, operation, query_param
from api.routes.bodies import number_arg
from api.routes.images import image_url
from api.schemas import STRING, ref

bp = Blueprint("status", __name__)

# include_base64 inlines images only up to this many bytes per job; past it the image has a
# "base64_omitted" reason and the client downloads it from its url instead.
BASE64_LIMIT = 16 * 1024 * 1024
# Comments sent this often keep proxies and load balancers from closing an idle stream.
HEARTBEAT_SECONDS = 15.0


@bp.get("/api/status/<job_id>")
@operation(
    "A job's status; with ?wait=, a long poll that answers as soon as the job changes",
    {200: ref("Job")},
    errors=(400, 404),
    parameters=[
        JOB_ID,
        query_param(
            "wait",
            {"type": "number", "minimum": 0},
            "Seconds to wait for a change (at most LONG_POLL_MAX, default 60)",
        ),
        query_param(
            "since",
            {"type": "number", "minimum": 0},
            "The `version` of an earlier answer: wait for a change after it",
        ),
    ],
)
def job_status(job_id: str):
    """The job now; with ?wait=N, as soon as it changes or ends (at most N seconds).

    ?since=<version> (the `version` of an earlier answer) waits for a change after that
    answer, so a client looping on long polls misses nothing between two calls.
    """
    s = sidecar.current()
    caller = auth.caller()
    wait = number_arg("wait", 0, s.config.long_poll_max)
    since = number_arg("since", 0, float("inf"))
    # One read answers the common case: no wait, or a job that has already moved on.
    job = tenancy.job_of(s.store, caller, job_id)
    if wait and not job.finished and since in (None, job.updated_at):
        with s.watchers.slot(caller.name):
            s.store.wait_for_change(job_id, job.updated_at, wait)
        job = tenancy.job_of(s.store, caller, job_id)
    if not request.query_string and s.status_docs is not None:
        # A plain poll nginx would have answered from the job's status file, had it one.
        s.status_docs.want(job)
    reason = s.fleet.overview().waiting_reason(job) if s.fleet is not None else None
    caching = status_cache.headers(job, caller, s, bool(reason))
    if status_cache.not_modified(caching):
        return Response(status=304, headers=caching)
    body = job.to_status(image_url, s.object_url(), caller.sees_server_paths)
    if reason:
        body["waiting_reason"] = reason  # no live node can run it: it waits for one
    if job.options.get("include_base64"):
        _inline(body["images"], s.config.comfyui_output_dir)
    return jsonify(body), 200, caching


@bp.get("/api/status/<job_id>/events")
@operation(
    "Server-sent events of a job: snapshot, then update on every change, then end",
    {200: ("text/event-stream: each data line is a Job", STRING, "text/event-stream")},
    errors=(404,),
    parameters=[JOB_ID],
    description="After STREAM_MAX_SECONDS, or as the server stops (a restart), an unfinished"
    " job's stream ends with `event: expired` (its `reason` says which); reconnect to follow on"
    " (EventSource does that by itself).",
)
def job_events(job_id: str):
    """Server-sent events: `snapshot` on connect, `update` on every change, `end` (the final
    state) before the stream closes; `: keepalive` comments while nothing happens, and
    `expired` when the stream reached its maximum lifetime."""
    s = sidecar.current()
    caller = auth.caller()
    tenancy.check_visible(s.store, caller, job_id)
    s.watchers.acquire(caller.name)
    store, watchers, lifetime = s.store, s.watchers, s.config.stream_max_seconds
    object_url = s.object_url()

    def stream():
        try:
            yield "retry: 2000\n\n"
            first = True
            for job in job_watch.changes(store, job_id, HEARTBEAT_SECONDS, lifetime=lifetime):
                if job is None:
                    yield ": keepalive\n\n"
                    continue
                if isinstance(job, job_watch.Expired):
                    reason = {"job_id": job_id, "reason": job.reason}
                    yield f"event: expired\ndata: {json.dumps(reason)}\n\n"
                    continue
                kind = "snapshot" if first else "update"
                first = False
                shown = job.to_status(image_url, object_url, caller.sees_server_paths)
                body = json.dumps(shown, separators=(",", ":"))
                yield f"id: {job.updated_at}\nevent: {kind}\ndata: {body}\n\n"
                if job.finished:
                    yield f"event: end\ndata: {body}\n\n"
        finally:
            watchers.release(caller.name)

    return Response(
        stream_with_context(stream()),
        mimetype="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            # nginx: pass each event on at once instead of buffering the response.
            "X-Accel-Buffering": "no",
        },
    )


def _inline(images: list[dict], root) -> None:
    budget = BASE64_LIMIT
    for image in images:
        try:
            path = outputs.resolve(root, image["filename"], image["subfolder"])
        except (FileNotFoundError, UnsafePath):
            image["base64_omitted"] = "file not found"
            continue
        if not outputs.is_image(path):
            image["base64_omitted"] = "not a PNG, JPEG, WebP or GIF image"
            continue
        size = path.stat().st_size
        if size > budget:
            image["base64_omitted"] = f"over the {BASE64_LIMIT // (1024 * 1024)} MB inline limit"
            continue
        budget -= size
        image["base64"] = base64.b64encode(path.read_bytes()).decode("ascii")
        image["media_type"] = outputs.media_type(path)
