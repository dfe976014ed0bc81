"""POST /api/upload: an input image for a workflow, checked here and stored by ComfyUI."""

from flask import Blueprint, jsonify, request

from api import sidecar
from api.auth import requires
from api.exceptions import InvalidRequest
from api.graphs import images
from api.routes.bodies import flag

bp = Blueprint("upload", __name__)


@bp.post("/api/upload")
@requires("generate")
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
    stored = s.client.upload_image(name, data, media, overwrite=overwrite)
    answer = {
        "name": stored["name"],
        "subfolder": stored.get("subfolder", ""),
        "type": stored.get("type", "input"),
    }
    # What to put in a workflow's `images` to use this file.
    answer["reference"] = images.upload_reference(answer)
    answer["size"] = len(data)
    return jsonify(answer)
