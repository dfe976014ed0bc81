"""Copies of job results under chosen names in the output directory (POST /api/save,
and `save_to_disk` on generate)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from api import outputs

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")


class NameTaken(FileExistsError):
    """A file with the requested name already exists (and renaming was not asked for)."""


def clean_name(filename: object) -> str:
    """A safe file name ending in .png: no separators, no traversal, nothing hidden."""
    if not isinstance(filename, str) or not filename.strip():
        raise ValueError("filename is required")
    name = filename.strip()
    if "/" in name or "\\" in name or "\x00" in name:
        raise ValueError("filename must not contain path separators")
    if name in (".", "..") or ".." in name:
        raise ValueError("filename must not contain '..'")
    if not NAME.match(name):
        raise ValueError(
            "filename may only use letters, digits, '.', '_', '-' and spaces, and must start"
            " with a letter or digit (at most 128 characters)"
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
            raise ValueError("filename would leave the output directory")
        try:
            # O_EXCL: two concurrent saves can never both take the same name.
            with open(candidate, "xb") as target, open(source, "rb") as src:
                shutil.copyfileobj(src, target)
        except FileExistsError:
            continue
        return candidate
    raise NameTaken(name)


def save_on_completion(job: dict, output_dir: Path, store) -> None:
    """Apply a generate request's save_to_disk option once its job completed."""
    options = job.get("options") or {}
    if not options.get("save_to_disk") or not job["outputs"]:
        return
    image = job["outputs"][0]
    try:
        source = outputs.resolve(output_dir, image["filename"], image.get("subfolder", ""))
        name = clean_name(options.get("filename") or f"{job['id']}.png")
        saved = save_copy(output_dir, source, name, rename=True)
    except (OSError, ValueError) as exc:
        log.warning("job %s: save_to_disk failed: %s", job["id"], exc)
        store.set_option(job["id"], "save_error", str(exc))
        return
    store.set_option(job["id"], "saved_as", saved.name)
