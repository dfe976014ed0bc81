"""POST /api/upload: an input image for a workflow, checked here and stored by ComfyUI."""

from flask import Blueprint, jsonify, request

from api import auth, sidecar
from api.auth import requires
from api.exceptions import InvalidRequest
from api.graphs import images
from api.openapi import COMFYUI_ERRORS, operation
from api.routes.bodies import flag
from api.schemas import INTEGER, STRING, obj

bp = Blueprint("upload", __name__)


@bp.post("/api/upload")
@requires("generate")
@operation(
    "Store an input image (PNG, JPEG or WebP, judged by its content) in ComfyUI's input folder",
    {
        200: obj(
            {
                "name": STRING,
                "subfolder": STRING,
                "type": STRING,
                "reference": {**STRING, "description": "What a workflow's images field takes"},
                "size": INTEGER,
            }
        )
    },
    errors=(400, 413, 415, *COMFYUI_ERRORS),
    description="A key that is not admin has a folder of its own (keys/<name>/ in ComfyUI's"
    " input folder): its answers and references are relative to it, and its references in a"
    " workflow's images resolve inside it, so keys never see or replace each other's images.",
    body=obj(
        {
            "image": {"type": "string", "format": "binary"},
            "overwrite": {**STRING, "description": "true: replace a file of the same name"},
        },
        optional=("overwrite",),
    ),
    body_media="multipart/form-data",
)
def upload():
    s = sidecar.current()
    sent = request.files.get("image")
    if sent is None:
        raise InvalidRequest(
            "Send the image as multipart/form-data field 'image'", {"field": "image"}
        )
    data = sent.read()
    name, media = images.check_upload(
        sent.filename, data, int(s.config.max_upload_mb * 1024 * 1024)
    )
    overwrite = flag(request.form.get("overwrite", ""), "overwrite")
    folder = auth.caller().upload_folder
    stored = s.client.upload_image(name, data, media, overwrite=overwrite, subfolder=folder)
    if s.fleet is not None:
        # Jobs that load it run on this node, whose ComfyUI now has it (api/placement.py).
        where = (stored.get("subfolder") or "").strip("/")
        path = f"{where}/{stored['name']}" if where else stored["name"]
        s.store.record_upload(path, s.fleet.node)
    answer = {
        "name": stored["name"],
        "subfolder": images.within(stored.get("subfolder") or "", folder),
        "type": stored.get("type", "input"),
    }
    # What to put in a workflow's `images` to use this file.
    answer["reference"] = images.upload_reference(answer)
    answer["size"] = len(data)
    return jsonify(answer)
