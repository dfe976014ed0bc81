"""Submissions that answer with their result: POST /api/generate?wait=N (and the raw-graph
endpoint) hold the request until the job has ended, the synchronous call of the exported-workflow
bridges, in one request instead of a submission and a long poll.

Completed: 200, the job's status as GET /api/status shows it, with status_url and message; or,
for a client whose Accept prefers an image type to JSON, its first image itself (as GET
/api/image/<job_id> sends it, through nginx by X-Accel-Redirect), with the job's id in X-Job-ID:
a prompt in, an image out, in one request (406 when the job made no image).
Failed: 500 in the one error shape (the job's error as `error`, ComfyUI's payload as `details`,
the whole status as `job`); stopped at its deadline (timeout_minutes): 504; cancelled: 409. The
answer comes once the job is settled (its save_to_disk copy and uploads recorded, so
`saved_as` and `output_urls` are in it), or with the final status when the wait runs out first.
A job still running when the wait runs out gets the usual 202 with the status it has reached,
and the client follows status_url as after any submission: nothing is lost by waiting. The
wait holds a watcher slot, as a long poll does, taken before the job is submitted; when none is
free the submission answers 202 at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import jsonify, request

from api import auth, job_watch, outputs, sidecar
from api.exceptions import JobCancelled, JobFailed, JobTimedOut, NoImage, TooManyWatchers
from api.job import Job, JobStatus
from api.openapi import query_param
from api.routes.bodies import number_arg
from api.routes.images import IMAGE_BYTES, image_url, job_image
from api.schemas import ref

# What a completed answer keeps of the submission's own answer, beside the job's status.
SUBMISSION_FIELDS = ("status_url", "comfyui_node_errors", "replayed")

# What a completed job's answer can be. JSON first: a client that accepts anything (curl's
# */*, or no Accept at all) gets the status, as before images could be the answer.
ANSWER_TYPES = ("application/json", *dict.fromkeys(outputs.IMAGE_TYPES.values()))

# What a submission endpoint that can wait declares beside its own 202 and errors.
COMPLETED = (
    "With ?wait=: the job completed; its status, with status_url and message, or its first"
    " image when Accept prefers an image type (the job's id in X-Job-ID, the image's URL in"
    " Content-Location)",
    None,
    {kind: ref("Job") if kind == "application/json" else IMAGE_BYTES for kind in ANSWER_TYPES},
)
# Cancelled, completed without the image asked for, failed (a deadline is a 504, as
# ComfyUI's timeouts are).
ERRORS = (409, 406, 500)
WAIT_PARAM = query_param(
    "wait",
    {"type": "number", "minimum": 0},
    "Seconds to wait for the job to end (at most LONG_POLL_MAX): 200 with its status when it"
    " completed, 500/504/409 when it failed/timed out/was cancelled, 202 as without wait"
    " when it is still running",
)


@contextmanager
def waiting() -> Iterator[float | None]:
    """Around a submission: the wait it may do once submitted (?wait=, checked and given a
    watcher slot before anything is submitted). None without ?wait=, or when every slot is
    taken: then the job is still accepted and the answer is the 202 at once (a 429 would
    leave the client unsure whether its job exists)."""
    wait = number_arg("wait", 0, sidecar.current().config.long_poll_max)
    if not wait:
        yield None
        return
    watchers, key = sidecar.current().watchers, auth.caller().name
    try:
        watchers.acquire(key)
    except TooManyWatchers:
        yield None
        return
    try:
        yield wait
    finally:
        watchers.release(key)


def answer(job: Job, accepted: dict, wait: float | None):
    """The answer to a submission: `accepted` (202) at once, or with `wait` (inside
    waiting()) the job's end."""
    headers = {"Location": accepted["status_url"]}
    if not wait:
        return jsonify(accepted), 202, headers
    s = sidecar.current()
    caller = auth.caller()
    ended = job_watch.until_settled(s.store, job, wait, s.storage.enabled)
    if ended is None or not ended.finished:
        if ended is not None:
            accepted["status"] = ended.status.value
        return jsonify(accepted), 202, headers
    completed = ended.status == JobStatus.COMPLETED
    image = completed and _wants_image()
    if image and ended.outputs:
        response = job_image(ended)
        response.headers["X-Job-ID"] = ended.id
        return response
    shown = ended.to_status(image_url, s.object_url(), caller.sees_server_paths)
    extra = {
        "job_id": ended.id,
        "status": ended.status.value,
        "status_url": accepted["status_url"],
        "job": shown,
    }
    if image:
        raise NoImage(
            f"Job {ended.id} completed without an image; its status is at {extra['status_url']}",
            **extra,
        )
    if completed:
        kept = {key: accepted[key] for key in SUBMISSION_FIELDS if key in accepted}
        return jsonify({**shown, **kept, "message": "Job completed"}), 200, headers
    if ended.status == JobStatus.CANCELLED:
        raise JobCancelled(f"Job {ended.id} was cancelled", **extra)
    message = shown["error"] or "Job failed"
    timed_out = ended.deadline is not None and (ended.finished_at or 0) >= ended.deadline
    raise (JobTimedOut if timed_out else JobFailed)(message, shown["error_details"], **extra)


def _wants_image() -> bool:
    best = request.accept_mimetypes.best_match(ANSWER_TYPES)
    return best is not None and best != "application/json"
