"""GET /api/image/<filename>: an image from ComfyUI's output directory, and nothing else."""

from flask import Blueprint, request, url_for

from api import outputs
from api.errors import bad_request, not_found
from api.services import services

bp = Blueprint("images", __name__)


def image_url(image: dict) -> str:
    return url_for("images.image", filename=outputs.relative_name(image))


@bp.get("/api/image/<path:filename>")
def image(filename: str):
    subfolder = request.args.get("subfolder", "")
    try:
        path = outputs.resolve(services().config.comfyui_output_dir, filename, subfolder)
    except outputs.UnsafePath as exc:
        raise bad_request(f"Invalid image path: {exc}", code="invalid_path") from None
    except FileNotFoundError:
        raise not_found("Image not found") from None
    return outputs.send(path, services().config)
