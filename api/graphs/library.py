"""The workflow folders: every workflow in them, re-read whenever a file in them changes.

The shipped templates (WORKFLOWS_DIR) and the operator's own folder (USER_WORKFLOWS_PATH) are
read together; a workflow in a later folder replaces one of the same name in an earlier one, so
an operator can change a shipped template by dropping a copy in their folder. New or edited
files are picked up without a restart: added, removed or renamed ones on the next request, files
edited in place within a second. A workflow whose files cannot be
used is kept aside with the reason (GET /api/workflows lists it as invalid).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from api.exceptions import WorkflowError
from api.graphs.manifest import MANIFEST_SUFFIX, load
from api.graphs.workflow import Workflow

log = logging.getLogger(__name__)

# A file edited in place changes no folder's mtime: the files themselves are looked at this
# often (a file added, removed or renamed changes its folder's mtime and is seen at once).
FULL_SCAN_SECONDS = 1.0


def _scan(directory: Path) -> tuple:
    """(name, mtime, size) of every .json file in a folder: changes when any file does."""
    try:
        entries = [
            (e.name, e.stat().st_mtime_ns, e.stat().st_size)
            for e in os.scandir(directory)
            if e.name.endswith(".json") and e.is_file()
        ]
    except (FileNotFoundError, NotADirectoryError):
        return ()
    return tuple(sorted(entries))


def _folder_mtime(directory: Path) -> int | None:
    try:
        return os.stat(directory).st_mtime_ns
    except OSError:
        return None


class WorkflowLibrary:
    """The workflow folders, re-read whenever a file in one of them changes."""

    def __init__(self, *directories: Path) -> None:
        self.directories = [Path(d) for d in directories]
        self._lock = threading.Lock()
        self._signature: tuple = ()
        self._folders: tuple = ()
        self._scanned_at = float("-inf")
        self._valid: dict[str, Workflow] = {}
        self._invalid: dict[str, str] = {}

    def _refresh(self) -> None:
        # Every submission looks here: a stat per folder, the files only when one changed or
        # FULL_SCAN_SECONDS have passed (stat-ing every file cost 0.4 ms per request).
        folders = tuple(_folder_mtime(directory) for directory in self.directories)
        now = time.monotonic()
        if folders == self._folders and now - self._scanned_at < FULL_SCAN_SECONDS:
            return
        signature = tuple(_scan(directory) for directory in self.directories)
        with self._lock:
            if signature == self._signature:
                self._folders, self._scanned_at = folders, now
                return
            valid: dict[str, Workflow] = {}
            invalid: dict[str, str] = {}
            # name -> the last folder that has it (later folders replace earlier ones)
            found: dict[str, Path] = {}
            for directory, entries in zip(self.directories, signature, strict=True):
                for entry in entries:
                    if not entry[0].endswith(MANIFEST_SUFFIX):
                        name = entry[0][: -len(".json")]
                        if name in found and found[name] != directory:
                            log.info(
                                "workflow %s from %s replaces the one in %s",
                                name,
                                directory,
                                found[name],
                            )
                        found[name] = directory
            for name in sorted(found):
                try:
                    valid[name] = load(found[name], name)
                except (OSError, WorkflowError) as exc:
                    invalid[name] = str(exc)
                    log.warning("workflow %s is not usable: %s", name, exc)
                except Exception as exc:
                    # A graph shaped in a way nobody foresaw must not take the server down.
                    invalid[name] = f"could not be read: {type(exc).__name__}: {exc}"
                    log.exception("workflow %s could not be read", name)
            self._valid, self._invalid, self._signature = valid, invalid, signature
            # Last: a request that skips the scan must find the workflows they describe.
            self._folders, self._scanned_at = folders, now

    def names(self) -> list[str]:
        self._refresh()
        return sorted(self._valid)

    def invalid(self) -> dict[str, str]:
        self._refresh()
        return dict(self._invalid)

    def get(self, name: str) -> Workflow | None:
        self._refresh()
        return self._valid.get(name)

    def reason_invalid(self, name: str) -> str | None:
        self._refresh()
        return self._invalid.get(name)
