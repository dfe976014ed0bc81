"""ComfyUI's output directory: resolving user-supplied names to files that stay inside it."""

from __future__ import annotations

import mimetypes
import os
import threading
import time
from pathlib import Path
from urllib.parse import quote

from flask import Response, request, send_file

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}


class UnsafePath(ValueError):
    """A name that tries to leave the directory (traversal, absolute path, NUL, separators)."""


def _clean_parts(text: str, what: str) -> list[str]:
    if "\x00" in text:
        raise UnsafePath(f"{what} contains a NUL byte")
    if "\\" in text:
        raise UnsafePath(f"{what} contains a backslash")
    if text.startswith("/"):
        raise UnsafePath(f"{what} must be relative")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePath(f"{what} must not contain '..'")
    return parts


def resolve(root: Path, filename: str, subfolder: str = "") -> Path:
    """The real path of root/subfolder/filename, refusing anything that escapes root.

    Raises UnsafePath for names that try to escape and FileNotFoundError when the file is not
    there, including a symlink inside root that points outside it (it is treated as absent).
    """
    parts = _clean_parts(subfolder or "", "subfolder") + _clean_parts(filename or "", "filename")
    if not parts:
        raise UnsafePath("filename is empty")
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, candidate]) != real_root or candidate == real_root:
        raise FileNotFoundError(filename)
    if not os.path.isfile(candidate):
        raise FileNotFoundError(filename)
    return Path(candidate)


def media_type(path: Path) -> str:
    return IMAGE_TYPES.get(path.suffix.lower()) or (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )


# The shipped nginx sets this request header; only then can it act on X-Accel-Redirect. A
# client that reaches gunicorn directly and forges it only gets an empty body.
VIA_NGINX_HEADER = "X-Sidecar-Via"


def send(path: Path, config) -> Response:
    """The response for one resolved file: X-Accel-Redirect behind nginx, else the bytes."""
    mimetype = media_type(path)
    if config.accel_redirect_prefix and request.headers.get(VIA_NGINX_HEADER) == "nginx":
        relative = os.path.relpath(path, os.path.realpath(config.comfyui_output_dir))
        response = Response(status=200, mimetype=mimetype)
        response.headers["X-Accel-Redirect"] = (
            config.accel_redirect_prefix.rstrip("/") + "/" + quote(relative)
        )
        return response
    return send_file(path, mimetype=mimetype, conditional=True, max_age=3600)


def relative_name(image: dict) -> str:
    """How a job's image is named in the API: "subfolder/filename", or "filename" at the root."""
    subfolder = (image.get("subfolder") or "").strip("/")
    return f"{subfolder}/{image['filename']}" if subfolder else image["filename"]


RECENT = 2.0


class OutputIndex:
    """A listing of every image under the output directory, newest first, kept up to date
    cheaply: only directories whose mtime changed are re-read, and only new names are
    stat()ed, so a tree of 100,000 files costs a few stat calls per request."""

    def __init__(self, root: Path, min_interval: float = 0.5) -> None:
        self.root = Path(root)
        self.min_interval = min_interval
        self._lock = threading.Lock()
        # relative dir -> (mtime_ns, {file name: (mtime, size)}, [subdir names])
        self._dirs: dict[str, tuple[int, dict[str, tuple[float, int]], list[str]]] = {}
        self._sorted: list[tuple[float, str, int]] = []
        self._checked = 0.0

    def listing(self) -> list[tuple[float, str, int]]:
        """(mtime, relative name, size) of every image, newest first."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self.min_interval:
                seen: set[str] = set()
                changed = self._refresh("", seen)
                for gone in set(self._dirs) - seen:
                    del self._dirs[gone]
                    changed = True
                if changed:
                    self._rebuild()
                self._checked = now
            return self._sorted

    def _refresh(self, rel: str, seen: set[str]) -> bool:
        path = os.path.join(self.root, rel) if rel else str(self.root)
        try:
            st = os.stat(path)
        except OSError:
            return rel in self._dirs
        seen.add(rel)
        cached = self._dirs.get(rel)
        changed = False
        # Directory mtimes come from the kernel's coarse clock: a file created within the same
        # tick as the last change leaves the mtime unchanged. So a directory changed in the
        # last RECENT seconds is re-listed even if its mtime looks the same.
        recent = time.time() - st.st_mtime < RECENT
        if cached is None or cached[0] != st.st_mtime_ns or recent:
            files = dict(cached[1]) if cached else {}
            names, subdirs = set(), []
            try:
                entries = list(os.scandir(path))
            except OSError:
                entries = []
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                    elif entry.is_file(follow_symlinks=False) and (
                        os.path.splitext(entry.name)[1].lower() in IMAGE_TYPES
                    ):
                        names.add(entry.name)
                        if entry.name not in files:
                            info = entry.stat(follow_symlinks=False)
                            files[entry.name] = (info.st_mtime, info.st_size)
                except OSError:
                    continue
            gone = set(files) - names
            for name in gone:
                del files[name]
            added = cached is None or gone or len(files) != len(cached[1])
            self._dirs[rel] = (st.st_mtime_ns, files, subdirs)
            changed = bool(added) or cached[2] != subdirs
        for sub in self._dirs[rel][2]:
            changed |= self._refresh(f"{rel}/{sub}" if rel else sub, seen)
        return changed

    def _rebuild(self) -> None:
        items = [
            (mtime, f"{rel}/{name}" if rel else name, size)
            for rel, (_, files, _) in self._dirs.items()
            for name, (mtime, size) in files.items()
        ]
        items.sort(key=lambda item: (item[0], item[1]), reverse=True)
        self._sorted = items
