"""Copies of job results under chosen names in the output directory (POST /api/save,
and `save_to_disk` on generate)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from api import outputs
from api.exceptions import InvalidFilename, NameTaken, SidecarError
from api.job import Job
from api.jobstore import JobStore

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")
FIELD = {"field": "filename"}


def clean_name(filename: object) -> str:
    """A safe file name ending in .png: no separators, no traversal, nothing hidden."""
    if not isinstance(filename, str) or not filename.strip():
        raise InvalidFilename("filename is required", FIELD)
    name = filename.strip()
    if "/" in name or "\\" in name or "\x00" in name:
        raise InvalidFilename("filename must not contain path separators", FIELD)
    if name in (".", "..") or ".." in name:
        raise InvalidFilename("filename must not contain '..'", FIELD)
    if not NAME.match(name):
        raise InvalidFilename(
            "filename may only use letters, digits, '.', '_', '-' and spaces, and must start"
            " with a letter or digit (at most 128 characters)",
            FIELD,
        )
    if not name.lower().endswith(".png"):
        name += ".png"
    return name


def save_copy(output_dir: Path, source: Path, name: str, rename: bool) -> Path:
    """Copy source to output_dir/name without ever overwriting; with rename, pick name_N.png."""
    root = Path(os.path.realpath(output_dir))
    stem, suffix = os.path.splitext(name)
    for attempt in range(0, 10000 if rename else 1):
        candidate = root / (name if attempt == 0 else f"{stem}_{attempt}{suffix}")
        if os.path.commonpath([root, os.path.realpath(candidate)]) != str(root):
            raise InvalidFilename("filename would leave the output directory", FIELD)
        try:
            # O_EXCL: two concurrent saves can never both take the same name.
            with open(candidate, "xb") as target, open(source, "rb") as src:
                shutil.copyfileobj(src, target)
        except FileExistsError:
            continue
        return candidate
    raise NameTaken(
        f'{name} already exists in the output directory (send "rename": true to get a'
        " numbered name)"
    )


def save_on_completion(job: Job, output_dir: Path, store: JobStore) -> None:
    """Apply a generate request's save_to_disk option once its job completed."""
    if not job.options.get("save_to_disk") or not job.outputs:
        return
    image = job.outputs[0]
    try:
        source = outputs.resolve(output_dir, image["filename"], image.get("subfolder", ""))
        name = clean_name(job.options.get("filename") or f"{job.id}.png")
        saved = save_copy(output_dir, source, name, rename=True)
    except (OSError, SidecarError) as exc:
        log.warning("job %s: save_to_disk failed: %s", job.id, exc)
        store.record_option(job.id, "save_error", str(exc))
        return
    store.record_option(job.id, "saved_as", saved.name)
