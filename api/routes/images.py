"""Images from ComfyUI's output directory, by file name or by job, and saved copies."""

from flask import Blueprint, jsonify, request, url_for

from api import outputs, saving
from api.auth import requires
from api.errors import ApiError, bad_request, not_found
from api.jobs import JobStatus
from api.services import services

bp = Blueprint("images", __name__)


def image_url(image: dict) -> str:
    return url_for("images.image", filename=outputs.relative_name(image))


def _job_image(job: dict) -> dict:
    raw = request.args.get("index", "0")
    try:
        index = int(raw)
    except ValueError:
        raise bad_request(f"index must be an integer (got {raw!r})", {"field": "index"}) from None
    images = job["outputs"]
    if not images:
        if job["status"] in (JobStatus.QUEUED, JobStatus.PROCESSING):
            raise not_found(f"Job {job['id']} has no image yet (status {job['status']})")
        raise not_found(f"Job {job['id']} has no image (status {job['status']})")
    if not 0 <= index < len(images):
        raise bad_request(
            f"index must be between 0 and {len(images) - 1} (got {index})",
            {"field": "index", "allowed": {"minimum": 0, "maximum": len(images) - 1}},
        )
    return images[index]


@bp.get("/api/image/<path:filename>")
def image(filename: str):
    """By file name (`sub/name.png` or `?subfolder=`), or by job id (`?index=n`)."""
    s = services()
    subfolder = request.args.get("subfolder", "")
    if "/" not in filename and "." not in filename and not subfolder:
        job = s.store.get(filename)
        if job is not None:
            chosen = _job_image(job)
            filename, subfolder = chosen["filename"], chosen["subfolder"]
    try:
        path = outputs.resolve(s.config.comfyui_output_dir, filename, subfolder)
    except outputs.UnsafePath as exc:
        raise bad_request(f"Invalid image path: {exc}", code="invalid_path") from None
    except FileNotFoundError:
        raise not_found("Image not found") from None
    return outputs.send(path, s.config)


@bp.post("/api/save/<job_id>")
@requires("admin")
def save(job_id: str):
    """Copy a job's image to <output dir>/<filename>.png (409 if taken, unless rename)."""
    s = services()
    job = s.store.get(job_id)
    if job is None:
        raise not_found()
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object with a filename")
    try:
        name = saving.clean_name(body.get("filename"))
    except ValueError as exc:
        raise bad_request(str(exc), {"field": "filename"}, code="invalid_filename") from None
    rename = body.get("rename", False)
    if not isinstance(rename, bool):
        raise bad_request("rename must be a boolean", {"field": "rename"})
    chosen = _job_image(job)
    try:
        source = outputs.resolve(
            s.config.comfyui_output_dir, chosen["filename"], chosen["subfolder"]
        )
        saved = saving.save_copy(s.config.comfyui_output_dir, source, name, rename)
    except FileNotFoundError:
        raise not_found("The job's image is no longer in the output directory") from None
    except saving.NameTaken:
        raise ApiError(
            409,
            f'{name} already exists in the output directory (send "rename": true to get a'
            " numbered name)",
            "name_taken",
        ) from None
    except ValueError as exc:
        raise bad_request(str(exc), {"field": "filename"}, code="invalid_filename") from None
    return jsonify(
        status="success",
        message=f"Saved as {saved.name}",
        filename=saved.name,
        path=str(saved),
        url=url_for("images.image", filename=saved.name),
    ), 201
