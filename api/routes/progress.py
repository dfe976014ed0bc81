"""Live progress over a WebSocket: /ws/progress/<job_id>, in the generation server's shape.

The socket follows the job row exactly as the event stream does (api/watching.py: it reads the
job database and never asks ComfyUI), holds one worker thread while it is open, and counts
against the same per-worker watcher cap. One JSON message is sent on connect and one on every
change; after the final state (completed, failed or cancelled) the server closes the socket.
"""

import json

from flask import Blueprint

from api import jobs, watching, websocket
from api.errors import not_found
from api.routes.images import image_url
from api.services import services

bp = Blueprint("progress", __name__)

# The server pings at this interval: idle proxies keep the socket open, and a client that
# vanished without closing is noticed (no pong) and its thread freed.
PING_SECONDS = 15.0


def message(job: dict) -> dict:
    """A job as one progress message: job_id, status, progress (0.0-1.0), step, max_steps,
    message (a sentence for people), image_url and error."""
    body = jobs.public(job, image_url)
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
    if status == jobs.JobStatus.QUEUED:
        position = body["queue_position"]
        return f"Queued (position {position})" if position else "Queued"
    if status == jobs.JobStatus.PROCESSING:
        if body["total_steps"]:
            return f"Step {body['current_step'] or 0} of {body['total_steps']}"
        return "Processing"
    if status == jobs.JobStatus.COMPLETED:
        return "Completed"
    if status == jobs.JobStatus.CANCELLED:
        return "Cancelled"
    return f"Failed: {body['error']}" if body["error"] else "Failed"


class _Closed:
    """A stop flag for watching.changes(): set once the client has gone."""

    def __init__(self, ws) -> None:
        self.ws = ws

    def is_set(self) -> bool:
        return not self.ws.connected


@bp.get("/ws/progress/<job_id>")
def not_a_socket(job_id: str):
    """A plain HTTP request: 426, saying what this URL is."""
    raise websocket.upgrade_required()


@bp.get("/ws/progress/<job_id>", websocket=True)
def progress_socket(job_id: str):
    s = services()
    if s.store.version(job_id) is None:
        raise not_found()
    with s.watchers.slot():
        ws = websocket.accept(ping_interval=PING_SECONDS)
        try:
            last = None
            for job in watching.changes(s.store, job_id, PING_SECONDS, stop=_Closed(ws)):
                # A row change this shape does not show (the running node) is not news.
                text = None if job is None else json.dumps(message(job), separators=(",", ":"))
                if text is not None and text != last:
                    ws.send(text)
                    last = text
        except websocket.ConnectionClosed:
            pass
        websocket.close(ws, 1000, "job finished")
    return websocket.finished(ws)
