"""Images from ComfyUI's output directory, by file name or by job, and saved copies."""

from pathlib import Path

from flask import Blueprint, jsonify, request, stream_with_context, url_for

from api import auth, image_links, outputs, remote_images, saving, sidecar, tenancy
from api.auth import requires
from api.exceptions import InvalidRequest, NotFound, UnsafePath
from api.job import Job, image_name
from api.openapi import JOB_ID, operation, path_param, query_param
from api.routes.bodies import json_object
from api.schemas import BOOLEAN, STRING, obj
from api.tenancy import SIGNED_URL, Caller

bp = Blueprint("images", __name__)
bp.after_request(outputs.refuse_check)

INDEX = query_param(
    "index", {"type": "integer", "minimum": 0}, "Which of the job's images (default 0)"
)
IMAGE_BYTES = {"type": "string", "format": "binary"}
SAVE_NAME = {**STRING, "description": "Letters, digits, '.', '_', '-', space; .png is added"}


def image_url(image: dict) -> str:
    """An output image's URL for the current caller (file_url)."""
    return file_url(image_name(image))


def file_url(name: str) -> str:
    """The URL of the output file `name` for the current caller: signed for a key that sees
    only its own jobs when IMAGE_URL_SECRET is set (nginx then sends it without asking the
    sidecar)."""
    url = url_for("images.image", filename=name)
    config = sidecar.current().config
    if image_links.signs_for(config, auth.caller()):
        return image_links.signed(url, config.image_url_secret, config.image_url_seconds)
    return url


def _may_have(s: sidecar.Sidecar, caller: Caller, name: str, filename: str, subfolder: str) -> bool:
    """Whether this caller may have the output file `name`, asked for as `filename` (the
    path's name) and `subfolder`: every file for the operator and admin keys; for a signed URL
    the very file its path names (not one reached by ?subfolder= or a symbolic link); a key's
    own files for any other key."""
    if caller.sees_all:
        return True
    if caller is SIGNED_URL:
        return not subfolder and name == filename
    return s.store.owns_file(caller.name, name)


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
            "The image (PNG, JPEG, WebP or GIF; any other file is a 404); its type follows its"
            " extension",
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
    description="A key that is not admin gets only images of its own jobs (and their saved"
    " copies); any other name is a 404.",
)
def image(filename: str):
    """By file name (`sub/name.png` or `?subfolder=`), or by job id (`?index=n`)."""
    s = sidecar.current()
    caller = auth.caller()
    check = outputs.checking()  # nginx's question before it sends a file (images-off.conf)
    if check == "caller":  # may it send this caller any image?
        return outputs.check_answer(s.config, caller.sees_all, keep_no=True)
    subfolder = request.args.get("subfolder", "")
    job = None
    if "/" not in filename and "." not in filename and not subfolder:
        job = s.store.get(filename)
        if job is not None and not caller.owns(job):
            job = None  # another key's job id is just a file name that is not there
        if job is not None:
            chosen = _job_image(job)
            filename, subfolder = chosen["filename"], chosen["subfolder"]
    return _send(s, caller, job, filename, subfolder, check)


def job_image(job: Job):
    """A completed job's first image, answered as GET /api/image/<job_id> answers it, with its
    own URL in Content-Location: for a submission with ?wait= whose client asked for the image
    itself (api/routes/awaiting.py)."""
    first = job.outputs[0]
    response = _send(sidecar.current(), auth.caller(), job, first["filename"], first["subfolder"])
    response.headers["Content-Location"] = image_url(first)
    return response


def _send(
    s: sidecar.Sidecar,
    caller: Caller,
    job: Job | None,
    filename: str,
    subfolder: str,
    check: str | None = None,
):
    """One image by name, after the checks every way of asking for it passes: a safe path,
    an image type, and a key's own file."""
    try:
        path = outputs.resolve(s.config.comfyui_output_dir, filename, subfolder)
    except UnsafePath as exc:
        raise UnsafePath(f"Invalid image path: {exc.message}") from None
    except FileNotFoundError:
        if check:  # nginx cannot send it: the whole request will come
            return outputs.check_answer(s.config, False)
        return _from_elsewhere(s, caller, job, filename, subfolder)
    if not outputs.is_image(path):
        raise NotFound("Image not found (only PNG, JPEG, WebP and GIF files are served)")
    name = outputs.relative_name(s.config.comfyui_output_dir, path)
    if not _may_have(s, caller, name, filename, subfolder):
        raise NotFound("Image not found")
    if check:
        # Yes only for the very file nginx would send: not one reached through a symbolic link.
        return outputs.check_answer(s.config, name == filename and not subfolder)
    return outputs.send(path, s.config)


def _from_elsewhere(
    s: sidecar.Sidecar, caller: Caller, job: Job | None, filename: str, subfolder: str
):
    """An image that is not in this node's output folder: from object storage when it was
    uploaded (S3_DELETE_LOCAL, or another node made it), else, in a cluster, from the node
    that made it. The same rules as for a local file: images only, and a key's own only."""
    name = image_name({"filename": filename, "subfolder": subfolder})
    if not outputs.is_image(name) or not _may_have(s, caller, name, filename, subfolder):
        raise NotFound("Image not found")
    if job is None and s.store.shared:
        job = s.store.find_by_image(name)
    if job is not None and s.storage.enabled:
        keys = {entry["index"]: entry["key"] for entry in job.objects}
        for index, image in enumerate(job.outputs):
            if image_name(image) == name and index in keys:
                return outputs.send_stream(stream_with_context(s.storage.chunks(keys[index])), name)
    if s.fleet is not None and not remote_images.forwarded():
        return _from_another_node(s, job, filename, subfolder)
    raise NotFound("Image not found")


def _from_another_node(s: sidecar.Sidecar, job: Job | None, filename: str, subfolder: str):
    """In a cluster: an image the node that ran the job made, from its output folder (when
    the nodes share it, OUTPUTS_SHARED) or from that node itself (its NODE_URL)."""
    name = image_name({"filename": filename, "subfolder": subfolder})
    maker = job or s.store.find_by_image(name)
    info = s.fleet.node_info(maker.node) if maker and maker.node else None
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
@requires("generate")
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
                    "path": {
                        **STRING,
                        "description": "Where it was saved: the absolute path for the"
                        " operator (admin keys, or no keys), output/<name> for other keys",
                    },
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
    caller = auth.caller()
    job = tenancy.job_of(s.store, caller, job_id)
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
    # The copy is the job's owner's, like the image it was made from.
    s.store.add_file(job.id, saved.name)
    shown = str(saved) if caller.sees_server_paths else f"{tenancy.OUTPUT_DIR_NAME}/{saved.name}"
    return jsonify(
        status="success",
        message=f"Saved as {saved.name}",
        filename=saved.name,
        path=shown,
        url=file_url(saved.name),
    ), 201
