"""Copies of job results under chosen names in the output directory (POST /api/save,
and `save_to_disk` on generate)."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from api import outputs
from api.exceptions import (
    InvalidFilename,
    NameTaken,
    OutputNotWritable,
    SidecarError,
    StorageError,
    StorageFull,
)
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


def storage_error(exc: OSError, doing: str) -> StorageError:
    """A filesystem failure as the error a client reads: what failed and why, in words (the
    folder is named as the output folder, not by its path on the server)."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputNotWritable(
            f"Cannot {doing}: the sidecar may not write to the output folder ({reason}). Its"
            " user needs write access there (docs/deployment.md, file ownership)."
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"Cannot {doing}: the output folder's disk is full ({reason})")
    return StorageError(f"Cannot {doing}: the output folder refused it ({reason})")


def _claim(part: Path, candidate: Path) -> bool:
    """Give the finished copy its name, unless the name is taken (False). A hard link never
    replaces an existing file, so two concurrent saves can never both take one name."""
    try:
        os.link(part, candidate)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
            raise
        # A file system without hard links: create the name exclusively and copy again.
        try:
            with open(candidate, "xb") as target, open(part, "rb") as src:
                shutil.copyfileobj(src, target)
        except FileExistsError:
            return False
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
    return True


def save_copy(output_dir: Path, source: Path, name: str, rename: bool) -> Path:
    """Copy source to output_dir/name without ever overwriting; with rename, pick name_N.png.

    The bytes go to a hidden temporary file first and get their name only once complete, so
    a failure (permissions, a full disk) leaves nothing half-written under any name.
    """
    root = Path(os.path.realpath(output_dir))
    stem, suffix = os.path.splitext(name)
    part = root / f".{stem}.{uuid.uuid4().hex}.part"
    try:
        with open(source, "rb") as src, open(part, "xb") as target:
            shutil.copyfileobj(src, target)
        for attempt in range(0, 10000 if rename else 1):
            candidate = root / (name if attempt == 0 else f"{stem}_{attempt}{suffix}")
            if os.path.commonpath([root, os.path.realpath(candidate)]) != str(root):
                raise InvalidFilename("filename would leave the output directory", FIELD)
            if _claim(part, candidate):
                return candidate
    except FileNotFoundError:
        raise  # the source is gone: the caller says which
    except OSError as exc:
        raise storage_error(exc, f"save {name}") from None
    finally:
        part.unlink(missing_ok=True)
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
    except FileNotFoundError:
        why = "the image is no longer in the output folder"
    except SidecarError as exc:
        why = exc.message
    else:
        store.add_file(job.id, saved.name)  # the copy is the job owner's too
        store.record_option(job.id, "saved_as", saved.name)
        return
    log.warning("job %s: save_to_disk failed: %s", job.id, why)
    store.record_option(job.id, "save_error", why)
