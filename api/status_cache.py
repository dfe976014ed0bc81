"""Caching job statuses: a validator on every status, and a lifetime for those that can no
longer change.

Scripts poll GET /api/status/<job_id> every second or two, and dashboards keep reading jobs
that ended long ago. Every status carries an ETag (the row's updated_at and the kind of
caller), so a client that sends it back in If-None-Match gets a 304 from one read of the row.
A status that can never change again (Job.settled: final, its save_to_disk copy and uploads
recorded) may also be kept: by the client for STATUS_CACHE_SECONDS (`private`: it is this
caller's), and by the shipped nginx, which caches it per path, Host, client address and API
key when the sidecar says so with X-Accel-Expires (nginx honours it and never passes it on).
A tenant's status with signed image URLs (IMAGE_URL_SECRET) has the URLs' expiry in its ETag.
A status whose body the row alone does not fix (presigned object URLs, which are signed anew
for each answer; a cluster's waiting reason) has no validator.
"""

from __future__ import annotations

from flask import request

from api import image_links
from api.job import Job
from api.outputs import VIA_NGINX_HEADER
from api.sidecar import Sidecar
from api.tenancy import Caller

REVALIDATE = "no-cache"


def headers(job: Job, caller: Caller, s: Sidecar, varies: bool = False) -> dict[str, str]:
    """ETag and Cache-Control (and X-Accel-Expires behind nginx) of this caller's view of the
    job's status; `varies`: something besides the row shapes the body."""
    presigned = s.storage.enabled and not s.config.s3_public_base_url and bool(job.objects)
    if varies or presigned:
        return {"Cache-Control": REVALIDATE}
    etag = job.status_etag(caller.sees_server_paths)
    seconds = int(s.config.status_cache_seconds)
    if job.outputs and image_links.signs_for(s.config, caller):
        # Its image URLs are signed until a time that moves in steps (api/image_links.py).
        etag += f"-{image_links.expiry(s.config.image_url_seconds)}"
        # A kept answer must not outlive its URLs: they hold IMAGE_URL_SECONDS at least, so one
        # kept for half of that still has half of it left when it is read.
        seconds = min(seconds, int(s.config.image_url_seconds // 2))
    found = {"ETag": f'"{etag}"'}
    if seconds <= 0 or not job.settled(uploads=s.storage.enabled):
        found["Cache-Control"] = REVALIDATE
        return found
    found["Cache-Control"] = f"private, max-age={seconds}"
    if request.headers.get(VIA_NGINX_HEADER) == "nginx":
        found["X-Accel-Expires"] = str(seconds)
    return found


def not_modified(found: dict[str, str]) -> bool:
    """Whether the request's If-None-Match names the status's current ETag."""
    etag = found.get("ETag")
    return etag is not None and request.if_none_match.contains(etag.strip('"'))
