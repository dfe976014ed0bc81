"""GET /api/status/<job_id>: where a job stands."""

import base64

from flask import Blueprint, jsonify

from api import jobs, outputs
from api.errors import not_found
from api.routes.images import image_url
from api.services import services

bp = Blueprint("status", __name__)

# include_base64 inlines images only up to this many bytes per job; past it the image has a
# "base64_omitted" reason and the client downloads it from its url instead.
BASE64_LIMIT = 16 * 1024 * 1024


@bp.get("/api/status/<job_id>")
def job_status(job_id: str):
    s = services()
    job = s.store.get(job_id)
    if job is None:
        raise not_found()
    body = jobs.public(job, image_url)
    if job["options"].get("include_base64"):
        _inline(body["images"], s.config.comfyui_output_dir)
    return jsonify(body)


def _inline(images: list[dict], root) -> None:
    budget = BASE64_LIMIT
    for image in images:
        try:
            path = outputs.resolve(root, image["filename"], image["subfolder"])
        except (FileNotFoundError, outputs.UnsafePath):
            image["base64_omitted"] = "file not found"
            continue
        size = path.stat().st_size
        if size > budget:
            image["base64_omitted"] = f"over the {BASE64_LIMIT // (1024 * 1024)} MB inline limit"
            continue
        budget -= size
        image["base64"] = base64.b64encode(path.read_bytes()).decode("ascii")
        image["media_type"] = outputs.media_type(path)
