"""Input images: checking uploads, and turning image references into LoadImage values.

An image a workflow loads is given, per request, as one of:
  "photo.png" / "sub/photo.png"       a file in ComfyUI's input directory (POST /api/upload)
  {"name", "subfolder", "type"}        exactly what POST /api/upload answered
  "job:<job_id>"                       the first image of an earlier, completed job
  {"job_id": "<job_id>", "index": n}   its n-th image
LoadImage reads files of the output (or temp) directory when the name ends in " [output]"
(" [temp]"): every ComfyUI since 2023 resolves that suffix (folder_paths.annotated_filepath),
so an earlier result is used where it lies, without a copy.

An API key that is not admin has a folder of its own in the input directory (its
`upload_folder`, api/tenancy.py): its uploads go there, its references are resolved inside it,
and it may load earlier results only of its own jobs (job:<job_id>), never a file of the output
or temp directory by name.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from werkzeug.utils import secure_filename

from api.exceptions import EmptyUpload, InvalidImage, UnsupportedMedia, UploadTooLarge

if TYPE_CHECKING:
    from api.tenancy import Caller
from api.job import JobStatus
from api.jobstore import JobStore

# What an upload may be, recognised by its first bytes (never by its name or Content-Type).
IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
)
EXTENSIONS = {"png": ("png",), "jpg": ("jpg", "jpeg"), "webp": ("webp",)}
ANNOTATION = re.compile(r" \[(input|output|temp)\]$")

IMAGE_REF_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": 512},
        {
            "type": "object",
            "properties": {
                "job_id": {"type": "string", "minLength": 1, "maxLength": 64},
                "index": {"type": "integer", "minimum": 0},
            },
            "required": ["job_id"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 256},
                "subfolder": {"type": "string", "maxLength": 256},
                "type": {"enum": ["input", "output", "temp"]},
            },
            "required": ["name"],
            "additionalProperties": False,
        },
    ],
    "description": 'an uploaded image name, \'job:<job_id>\', {"job_id", "index"} or the '
    '{"name", "subfolder", "type"} POST /api/upload answered',
}


def sniff(data: bytes) -> tuple[str, str] | None:
    """(extension, media type) of PNG, JPEG or WebP content; None for anything else."""
    for magic, ext, media in IMAGE_SIGNATURES:
        if data.startswith(magic):
            return ext, media
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    return None


def check_upload(filename: str | None, data: bytes, max_bytes: int) -> tuple[str, str]:
    """A safe file name and media type for an upload; raises when it is not one we accept."""
    field = {"field": "image"}
    if not data:
        raise EmptyUpload("The uploaded image is empty", field)
    if len(data) > max_bytes:
        raise UploadTooLarge(
            f"The image is {len(data) / 1048576:.1f} MB; uploads are limited to "
            f"{max_bytes / 1048576:g} MB (MAX_UPLOAD_MB)",
            field,
        )
    found = sniff(data)
    if found is None:
        raise UnsupportedMedia(
            "The upload is not a PNG, JPEG or WebP image (checked by its content)", field
        )
    ext, media = found
    name = secure_filename(filename or "") or "upload"
    stem, dot, given = name.rpartition(".")
    if dot and stem and given.lower() in EXTENSIONS[ext]:
        return name, media
    if dot and stem and given.lower() in ("png", "jpg", "jpeg", "webp"):
        name = stem  # a wrong image extension: let it say what the content is
    return f"{name}.{ext}", media


def upload_reference(answer: dict) -> str:
    """The `images` entry that refers to what ComfyUI stored for an upload."""
    return _annotated(answer.get("name", ""), answer.get("subfolder") or "", answer.get("type"))


def _safe(path: str, what: str) -> str:
    if not path or "\x00" in path or "\\" in path or path.startswith("/"):
        raise InvalidImage(f"{what}: {path!r} is not a relative file name")
    if any(part == ".." for part in path.split("/")):
        raise InvalidImage(f"{what}: {path!r} must not contain '..'")
    return path


def _annotated(name: str, subfolder: str, kind: str | None) -> str:
    path = f"{subfolder.strip('/')}/{name}" if subfolder.strip("/") else name
    path = _safe(path, "image")
    return path if kind in (None, "", "input") else f"{path} [{kind}]"


def within(subfolder: str, folder: str) -> str:
    """A subfolder as seen from inside `folder` (a key's own upload folder; "" is the root)."""
    subfolder = subfolder.strip("/")
    if folder and subfolder == folder:
        return ""
    if folder and subfolder.startswith(folder + "/"):
        return subfolder[len(folder) + 1 :]
    return subfolder


def _inside(folder: str, path: str, kind: str | None) -> str:
    """A caller's reference placed in its own upload folder (nothing to do for the operator)."""
    if not folder:
        return path
    if kind not in (None, "", "input"):
        raise InvalidImage(
            f"{path!r}: this key may load only its own uploads, and earlier results as job:<job_id>"
        )
    return f"{folder}/{path}"


def resolve(ref: Any, store: JobStore, where: str = "images", caller: Caller | None = None) -> str:
    """The LoadImage value for one image reference (InvalidImage naming `where` if none), as
    `caller` may use it (None: the operator, who may use any)."""
    field = where.partition("[")[0]
    folder = caller.upload_folder if caller is not None else ""
    try:
        if isinstance(ref, dict) and "job_id" in ref:
            return _job_image(str(ref["job_id"]), int(ref.get("index", 0)), store, caller)
        if isinstance(ref, dict):
            kind = ref.get("type")
            path = _annotated(str(ref["name"]), str(ref.get("subfolder") or ""), kind)
            return _inside(folder, path, kind)
        text = str(ref).strip()
        if text.startswith("job:"):
            return _job_image(text[4:], 0, store, caller)
        match = ANNOTATION.search(text)
        _safe(text[: match.start()] if match else text, "image")
        return _inside(folder, text, match.group(1) if match else None)
    except InvalidImage as exc:
        raise InvalidImage(f"{where}: {exc.message}", {"field": field}) from None


def _job_image(job_id: str, index: int, store: JobStore, caller: Caller | None) -> str:
    job = store.get(job_id)
    if job is None or (caller is not None and not caller.owns(job)):
        raise InvalidImage(f"no job {job_id}")
    if job.status != JobStatus.COMPLETED:
        raise InvalidImage(f"job {job_id} is {job.status}, not completed")
    images = job.outputs
    if not 0 <= index < len(images):
        raise InvalidImage(f"job {job_id} has {len(images)} image(s); there is no index {index}")
    image = images[index]
    return _annotated(image["filename"], image.get("subfolder") or "", image.get("type"))
