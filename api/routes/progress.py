"""Live progress over a WebSocket: /ws/progress/<job_id>, in the generation server's shape.

The socket follows the job row exactly as the event stream does (api/job_watch.py: it reads the
job database and never asks ComfyUI), holds one worker thread while it is open, and counts
against the same per-worker watcher cap. One JSON message is sent on connect and one on every
change; after the final state (completed, failed or cancelled) the server closes the socket.
"""

import json

from flask import Blueprint

from api import auth, job_watch, sidecar, tenancy, ws_server
from api.job import Job, JobStatus
from api.openapi import JOB_ID, operation
from api.routes.images import image_url

bp = Blueprint("progress", __name__)

# The server pings at this interval: idle proxies keep the socket open, and a client that
# vanished without closing is noticed (no pong) and its thread freed.
PING_SECONDS = 15.0


def message(job: Job, server_paths: bool = True) -> dict:
    """A job as one progress message: job_id, status, progress (0.0-1.0), step, max_steps,
    message (a sentence for people), image_url and error."""
    body = job.to_status(image_url, server_paths)
    return {
        "job_id": body["job_id"],
        "status": body["status"],
        "progress": body["progress"],
        "step": body["current_step"],
        "max_steps": body["total_steps"],
        "message": _sentence(body),
        "image_url": body["image_url"],
        "error": body["error"],
    }


def _sentence(body: dict) -> str:
    status = body["status"]
    if status == JobStatus.QUEUED:
        position = body["queue_position"]
        return f"Queued (position {position})" if position else "Queued"
    if status == JobStatus.PROCESSING:
        if body["total_steps"]:
            return f"Step {body['current_step'] or 0} of {body['total_steps']}"
        return "Processing"
    if status == JobStatus.COMPLETED:
        return "Completed"
    if status == JobStatus.CANCELLED:
        return "Cancelled"
    return f"Failed: {body['error']}" if body["error"] else "Failed"


class _Closed:
    """A stop flag for job_watch.changes(): set once the client has gone."""

    def __init__(self, ws) -> None:
        self.ws = ws

    def is_set(self) -> bool:
        return not self.ws.connected


@bp.get("/ws/progress/<job_id>")
def not_a_socket(job_id: str):
    """A plain HTTP request: 426, saying what this URL is."""
    raise ws_server.upgrade_required()


@bp.get("/ws/progress/<job_id>", websocket=True)
@operation(
    "WebSocket of a job's progress: {job_id, status, progress, step, max_steps, message,"
    " image_url, error} on connect and on every change; closed after the final state",
    {101: ("Switching Protocols: the WebSocket is open", None, "")},
    errors=(400, 404, 426, 429, 501),
    parameters=[JOB_ID],
    description="After STREAM_MAX_SECONDS the server closes an unfinished job's socket with"
    " code 1001, and as it stops (a restart) with 1012; reconnect to follow on.",
)
def progress_socket(job_id: str):
    s = sidecar.current()
    caller = auth.caller()
    tenancy.check_visible(s.store, caller, job_id)
    with s.watchers.slot(caller.name):
        ws = ws_server.accept(ping_interval=PING_SECONDS)
        code, reason = 1000, "job finished"
        try:
            last = None
            for job in job_watch.changes(
                s.store,
                job_id,
                PING_SECONDS,
                stop=_Closed(ws),
                lifetime=s.config.stream_max_seconds,
            ):
                if isinstance(job, job_watch.Expired):
                    code, reason = job.close_code, job.reason
                    continue
                # A row change this shape does not show (the running node) is not news.
                text = None
                if job is not None:
                    shown = message(job, caller.sees_server_paths)
                    text = json.dumps(shown, separators=(",", ":"))
                if text is not None and text != last:
                    ws.send(text)
                    last = text
        except ws_server.ConnectionClosed:
            pass
        ws_server.close(ws, code, reason)
    return ws_server.finished(ws)
