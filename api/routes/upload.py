"""POST /api/upload: an input image for a workflow, checked here and stored by ComfyUI."""

from flask import Blueprint, jsonify, request

from api import inputs
from api.auth import requires
from api.errors import ApiError, bad_request
from api.services import services

bp = Blueprint("upload", __name__)


@bp.post("/api/upload")
@requires("generate")
def upload():
    s = services()
    sent = request.files.get("image")
    if sent is None:
        raise bad_request("Send the image as multipart/form-data field 'image'", {"field": "image"})
    data = sent.read()
    try:
        name, media = inputs.check_upload(
            sent.filename, data, int(s.config.max_upload_mb * 1024 * 1024)
        )
    except inputs.UploadRejected as exc:
        raise ApiError(exc.status, exc.message, exc.code, {"field": "image"}) from None
    overwrite = request.form.get("overwrite", "").strip().lower() in ("1", "true", "yes")
    stored = s.client.upload_image(name, data, media, overwrite=overwrite)
    answer = {
        "name": stored["name"],
        "subfolder": stored.get("subfolder", ""),
        "type": stored.get("type", "input"),
    }
    # What to put in a workflow's `images` to use this file.
    answer["reference"] = inputs.upload_reference(answer)
    answer["size"] = len(data)
    return jsonify(answer)
