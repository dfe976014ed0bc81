"""Images from ComfyUI's output directory, by file name or by job, and saved copies."""

from pathlib import Path

from flask import Blueprint, Response, jsonify, request, stream_with_context, url_for

from api import outputs, remote_images, saving, sidecar
from api.auth import requires
from api.exceptions import InvalidRequest, NotFound, UnsafePath
from api.job import Job, image_name
from api.openapi import JOB_ID, operation, path_param, query_param
from api.routes.bodies import json_object
from api.schemas import BOOLEAN, STRING, obj

bp = Blueprint("images", __name__)

INDEX = query_param(
    "index", {"type": "integer", "minimum": 0}, "Which of the job's images (default 0)"
)
IMAGE_BYTES = {"type": "string", "format": "binary"}
SAVE_NAME = {**STRING, "description": "Letters, digits, '.', '_', '-', space; .png is added"}


def image_url(image: dict) -> str:
    return url_for("images.image", filename=image_name(image))


def _job_image(job: Job) -> dict:
    raw = request.args.get("index", "0")
    try:
        index = int(raw)
    except ValueError:
        raise InvalidRequest(
            f"index must be an integer (got {raw!r})", {"field": "index"}
        ) from None
    if not job.outputs:
        if not job.finished:
            raise NotFound(f"Job {job.id} has no image yet (status {job.status})")
        raise NotFound(f"Job {job.id} has no image (status {job.status})")
    if not 0 <= index < len(job.outputs):
        last = len(job.outputs) - 1
        raise InvalidRequest(
            f"index must be between 0 and {last} (got {index})",
            {"field": "index", "allowed": {"minimum": 0, "maximum": last}},
        )
    return job.outputs[index]


@bp.get("/api/image/<path:filename>")
@operation(
    "An image from the output folder, by file name or by job id (with ?index=)",
    {
        200: (
            "The image; its type follows its extension",
            IMAGE_BYTES,
            tuple(dict.fromkeys(outputs.IMAGE_TYPES.values())),
        )
    },
    errors=(400, 404),
    parameters=[
        path_param("filename", "'name.png', 'sub/name.png', or a job id"),
        query_param("subfolder", STRING),
        INDEX,
    ],
)
def image(filename: str):
    """By file name (`sub/name.png` or `?subfolder=`), or by job id (`?index=n`)."""
    s = sidecar.current()
    subfolder = request.args.get("subfolder", "")
    job = None
    if "/" not in filename and "." not in filename and not subfolder:
        job = s.store.get(filename)
        if job is not None:
            chosen = _job_image(job)
            filename, subfolder = chosen["filename"], chosen["subfolder"]
    try:
        path = outputs.resolve(s.config.comfyui_output_dir, filename, subfolder)
    except UnsafePath as exc:
        raise UnsafePath(f"Invalid image path: {exc.message}") from None
    except FileNotFoundError:
        return _from_elsewhere(s, job, filename, subfolder)
    return outputs.send(path, s.config)


def _from_elsewhere(s: sidecar.Sidecar, job: Job | None, filename: str, subfolder: str):
    """An image that is not in this node's output folder: from object storage when it was
    uploaded (S3_DELETE_LOCAL, or another node made it), else, in a cluster, from the node
    that made it."""
    name = image_name({"filename": filename, "subfolder": subfolder})
    if job is None and s.store.shared:
        job = s.store.find_by_image(name)
    if job is not None and s.storage.enabled:
        keys = {entry["index"]: entry["key"] for entry in job.objects}
        for index, image in enumerate(job.outputs):
            if image_name(image) == name and index in keys:
                media = outputs.IMAGE_TYPES.get(Path(filename).suffix.lower())
                body = stream_with_context(s.storage.chunks(keys[index]))
                return Response(body, mimetype=media or "application/octet-stream")
    if s.fleet is not None and not remote_images.forwarded():
        return _from_another_node(s, job, filename, subfolder)
    raise NotFound("Image not found")


def _from_another_node(s: sidecar.Sidecar, job: Job | None, filename: str, subfolder: str):
    """In a cluster: an image the node that ran the job made, from its output folder (when
    the nodes share it, OUTPUTS_SHARED) or from that node itself (its NODE_URL)."""
    name = image_name({"filename": filename, "subfolder": subfolder})
    owner = job or s.store.find_by_image(name)
    info = s.fleet.node_info(owner.node) if owner and owner.node else None
    if info is None or info.id == s.fleet.node:
        raise NotFound("Image not found")
    if s.config.outputs_shared and info.output_dir:
        try:
            path = outputs.resolve(Path(info.output_dir), filename, subfolder)
        except FileNotFoundError:
            raise NotFound(f"Image not found (in node {info.id}'s output folder)") from None
        return outputs.send_file_only(path)
    if info.api_url:
        return remote_images.fetch(info.api_url, info.id)
    raise NotFound(f"Image not found here; node {info.id} made it and has no NODE_URL")


@bp.post("/api/save/<job_id>")
@requires("admin")
@operation(
    "Copy a job's image to <output folder>/<filename>.png",
    {
        201: (
            "Saved",
            obj(
                {
                    "status": {"const": "success"},
                    "message": STRING,
                    "filename": STRING,
                    "path": STRING,
                    "url": STRING,
                }
            ),
            "application/json",
        )
    },
    errors=(400, 404, 409, 507),
    parameters=[JOB_ID, INDEX],
    body=obj({"filename": SAVE_NAME, "rename": BOOLEAN}, optional=("rename",)),
)
def save(job_id: str):
    """Copy a job's image to <output dir>/<filename>.png (409 if taken, unless rename)."""
    s = sidecar.current()
    job = s.store.get(job_id)
    if job is None:
        raise NotFound()
    body = json_object(what=" with a filename")
    name = saving.clean_name(body.get("filename"))
    rename = body.get("rename", False)
    if not isinstance(rename, bool):
        raise InvalidRequest("rename must be a boolean", {"field": "rename"})
    chosen = _job_image(job)
    try:
        source = outputs.resolve(
            s.config.comfyui_output_dir, chosen["filename"], chosen["subfolder"]
        )
        saved = saving.save_copy(s.config.comfyui_output_dir, source, name, rename)
    except FileNotFoundError:
        raise NotFound("The job's image is no longer in the output directory") from None
    return jsonify(
        status="success",
        message=f"Saved as {saved.name}",
        filename=saved.name,
        path=str(saved),
        url=url_for("images.image", filename=saved.name),
    ), 201
