"""GET /api/status/<job_id>: where a job stands."""

from flask import Blueprint, jsonify

from api import jobs
from api.errors import not_found
from api.routes.images import image_url
from api.services import services

bp = Blueprint("status", __name__)


@bp.get("/api/status/<job_id>")
def job_status(job_id: str):
    job = services().store.get(job_id)
    if job is None:
        raise not_found()
    return jsonify(jobs.public(job, image_url))
