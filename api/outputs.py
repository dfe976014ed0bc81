"""ComfyUI's output directory: resolving user-supplied names to files that stay inside it,
sending them, and a listing of every image kept fresh in the background."""

from __future__ import annotations

import logging
import mimetypes
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from flask import Response, request, send_file

from api.exceptions import UnsafePath

log = logging.getLogger(__name__)

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}


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


def save_folder(pattern: str, node_folder: str = "", at: float | None = None) -> str:
    """The folder of the output folder a job's images are saved in, relative to it: a cluster
    node's own folder, then OUTPUT_SUBFOLDER's pattern at `at` (default now) in UTC. ComfyUI
    lists the whole folder it saves into on every save (to number the new file), so one that
    only grows makes every job slower; a folder a day keeps that to a day's images."""
    dated = time.strftime(pattern, time.gmtime(at)) if pattern else ""
    return "/".join(part for part in (node_folder, dated) if part)


def made_save_folder(root: Path, pattern: str, node_folder: str = "") -> str:
    """save_folder for a job sent now, the folder made first when OUTPUT_SUBFOLDER names one.
    Made by the sidecar, a new folder is the sidecar's own, so it can delete what ComfyUI saves
    there (PURGE_FILES); one ComfyUI makes is root's in the compose stack until the next `up`
    (docs/deployment.md). Where it cannot be made, ComfyUI makes it."""
    folder = save_folder(pattern, node_folder)
    if pattern:
        path = os.path.join(root, folder)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            log.warning("cannot make the output folder %s (%s); ComfyUI makes it", path, exc)
    return folder


def sending_folder(config, fleet=None) -> str:
    """made_save_folder for a job sent to ComfyUI now, by the submission, a cluster node's
    dispatcher (`fleet`: its own folder first) or the reconciliation's resubmission."""
    node_folder = fleet.output_folder if fleet is not None else ""
    return made_save_folder(config.comfyui_output_dir, config.output_subfolder, node_folder)


def media_type(path: Path) -> str:
    return IMAGE_TYPES.get(path.suffix.lower()) or (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )


def is_image(path: Path | str) -> bool:
    """PNG, JPEG, WebP or GIF by name: the only files the API serves."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_TYPES


def relative_name(root: Path, path: Path) -> str:
    """A resolved file's name relative to the output folder, as the API names images."""
    return os.path.relpath(path, os.path.realpath(root)).replace(os.sep, "/")


# The shipped nginx sets this request header; only then can it act on X-Accel-Redirect. A
# client that reaches gunicorn directly and forges it only gets an empty body.
VIA_NGINX_HEADER = "X-Sidecar-Via"


# Anyone who can use ComfyUI can put any file in its output folder. Served from the API's
# origin, an .html or .svg could run script with the page's access, so only image types are
# served, the browser may not guess another type (nosniff), and even a file that lies about
# its type runs nothing (a sandboxed document). nginx's /_outputs/ location says the same.
IMAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox",
}


def _private(response: Response) -> Response:
    # A key's images are its own: no shared cache may keep one for someone else.
    response.cache_control.public = False
    response.cache_control.private = True
    response.headers.update(IMAGE_HEADERS)
    return response


def send_file_only(path: Path) -> Response:
    """The bytes of a file outside this node's output folder (nginx's location cannot see it)."""
    return _private(send_file(path, mimetype=media_type(path), conditional=True, max_age=3600))


# On a streamed answer: nginx passes the bytes on as they come instead of holding the whole
# image in its buffers (and a temporary file) first.
UNBUFFERED = {"X-Accel-Buffering": "no"}


def send_stream(chunks, name: str) -> Response:
    """An image read from elsewhere (object storage), streamed under the same headers."""
    return _private(Response(chunks, mimetype=media_type(Path(name)), headers=UNBUFFERED))


# images-off.conf's subrequests (auth_request), before nginx sends an image from the output
# folder itself: "caller", may this client have every image there; "image", may it have
# <output folder>/<the requested name>. nginx clears the header on every other request; a client
# that reaches gunicorn directly and sends it learns no more than the image's own answer would
# tell it, and a wrong key it sends is counted as any other.
CHECK_HEADER = "X-Sidecar-Check"
CHECKS = ("caller", "image")


def checking() -> str | None:
    """The check nginx asks for (CHECKS), or None for any other request."""
    asked = request.headers.get(CHECK_HEADER)
    return asked if asked in CHECKS else None


def check_answer(config, yes: bool, keep_no: bool = False) -> Response:
    """A check's answer: 200, nginx may send the file; 403, it asks the next check or sends the
    request on to the sidecar whole. nginx keeps a yes (and a no with `keep_no`: a caller's,
    which the next check follows) as long as a final status, STATUS_CACHE_SECONDS: what a
    caller may have does not change while its key stays."""
    response = Response(status=200 if yes else 403)
    seconds = int(config.status_cache_seconds)
    if seconds > 0 and (yes or keep_no):
        response.headers["X-Accel-Expires"] = str(seconds)
    return response


def refuse_check(response: Response) -> Response:
    """After a check's request (one that failed too): auth_request takes 2xx, 401 and 403
    (nginx sends a 401's request to the sidecar whole), so any other answer becomes a 403."""
    if checking() and response.status_code not in (200, 401, 403):
        response.status_code = 403
    return response


def send(path: Path, config) -> Response:
    """The response for one resolved image: X-Accel-Redirect behind nginx, else the bytes."""
    mimetype = media_type(path)
    if config.accel_redirect_prefix and request.headers.get(VIA_NGINX_HEADER) == "nginx":
        relative = relative_name(config.comfyui_output_dir, path)
        response = Response(status=200, mimetype=mimetype)
        response.headers["X-Accel-Redirect"] = (
            config.accel_redirect_prefix.rstrip("/") + "/" + quote(relative)
        )
        response.headers.update(IMAGE_HEADERS)
        return response
    return send_file_only(path)


RECENT = 2.0


@dataclass
class _Dir:
    """What the index knows of one directory."""

    mtime_ns: int = 0
    files: dict[str, tuple[float, int]] = field(default_factory=dict)  # name -> (mtime, size)
    subdirs: set[str] = field(default_factory=set)
    others: set[str] = field(default_factory=set)


class OutputIndex:
    """A listing of every image under the output directory, newest first, kept up to date
    cheaply: only directories that changed are re-read, only new names are stat()ed, and new
    images (which are the newest) are put in front of the sorted list instead of re-sorting."""

    def __init__(self, root: Path, min_interval: float = 0.5, background: bool = True) -> None:
        self.root = Path(root)
        self.min_interval = min_interval
        self.background = background
        self._lock = threading.Lock()
        self._dirs: dict[str, _Dir] = {}  # by path relative to root ("" for the root)
        self._sorted: list[tuple[float, str, int]] = []
        self._checked = 0.0
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def listing(self) -> list[tuple[float, str, int]]:
        """(mtime, relative name, size) of every image, newest first.

        With background=True a thread keeps the listing fresh (at most min_interval old) and
        requests only read it: re-listing a directory of 100,000 files takes longer than a
        request should, and happens after every new image. The first call waits for the
        initial scan.
        """
        if self.background:
            if self._thread is None:
                with self._lock:
                    if self._thread is None:
                        self._thread = threading.Thread(
                            target=self._keep_fresh, name="output-index", daemon=True
                        )
                        self._thread.start()
            self._ready.wait()
            return self._sorted
        with self._lock:
            if time.monotonic() - self._checked >= self.min_interval:
                self.refresh()
            return self._sorted

    def _keep_fresh(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:
                log.exception("could not refresh the output listing")
            self._ready.set()
            self._stop.wait(self.min_interval)

    def stop(self) -> None:
        """Stop the background refresher (worker exit); a later listing() starts it again."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        self._stop.clear()

    def refresh(self) -> None:
        """Bring the listing up to date with the directory tree."""
        added: list[tuple[float, str, int]] = []
        removed: set[str] = set()
        seen: set[str] = set()
        self._refresh("", seen, added, removed)
        for gone in set(self._dirs) - seen:
            removed.update(_join(gone, name) for name in self._dirs.pop(gone).files)
        self._apply(added, removed)
        self._checked = time.monotonic()

    def _refresh(self, rel: str, seen: set[str], added: list, removed: set[str]) -> None:
        path = os.path.join(self.root, rel) if rel else str(self.root)
        try:
            st = os.stat(path)
        except OSError:
            return
        seen.add(rel)
        cached = self._dirs.get(rel)
        # Directory mtimes come from the kernel's coarse clock: a file created within the same
        # tick as the last change leaves the mtime unchanged. So a directory changed in the
        # last RECENT seconds is re-listed even if its mtime looks the same.
        recent = time.time() - st.st_mtime < RECENT
        if cached is None or cached.mtime_ns != st.st_mtime_ns or recent:
            entry = cached or _Dir()
            try:
                names = set(os.listdir(path))
            except OSError:
                names = set()
            # Set arithmetic runs in C: only names not seen before are looked at one by one.
            for name in names - entry.files.keys() - entry.subdirs - entry.others:
                self._classify(path, rel, name, entry, added)
            for name in entry.files.keys() - names:
                del entry.files[name]
                removed.add(_join(rel, name))
            entry.subdirs &= names
            entry.others &= names
            entry.mtime_ns = st.st_mtime_ns
            self._dirs[rel] = entry
        for sub in self._dirs[rel].subdirs:
            self._refresh(_join(rel, sub), seen, added, removed)

    @staticmethod
    def _classify(path: str, rel: str, name: str, entry: _Dir, added: list) -> None:
        try:
            info = os.lstat(os.path.join(path, name))
        except OSError:
            return
        if stat.S_ISDIR(info.st_mode):
            entry.subdirs.add(name)
        elif stat.S_ISREG(info.st_mode) and os.path.splitext(name)[1].lower() in IMAGE_TYPES:
            entry.files[name] = (info.st_mtime, info.st_size)
            added.append((info.st_mtime, _join(rel, name), info.st_size))
        else:
            entry.others.add(name)  # symlinks, other files: never served, never listed

    def _apply(self, added: list, removed: set[str]) -> None:
        current = self._sorted
        if removed:
            current = [item for item in current if item[1] not in removed]
        if added:
            added.sort(reverse=True)
            if not current or added[-1] >= current[0]:
                current = added + current  # the usual case: new images are the newest
            else:
                current = sorted(current + added, reverse=True)
        if removed or added:
            self._sorted = current


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name
