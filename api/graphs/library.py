"""The workflow folders: every workflow in them, re-read whenever a file in them changes.

The shipped templates (WORKFLOWS_DIR) and the operator's own folder (USER_WORKFLOWS_PATH) are
read together; a workflow in a later folder replaces one of the same name in an earlier one, so
an operator can change a shipped template by dropping a copy in their folder. New or edited
files are picked up on the next request, without a restart. A workflow whose files cannot be
used is kept aside with the reason (GET /api/workflows lists it as invalid).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from api.exceptions import WorkflowError
from api.graphs.manifest import MANIFEST_SUFFIX, load
from api.graphs.workflow import Workflow

log = logging.getLogger(__name__)


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


class WorkflowLibrary:
    """The workflow folders, re-read whenever a file in one of them changes."""

    def __init__(self, *directories: Path) -> None:
        self.directories = [Path(d) for d in directories]
        self._lock = threading.Lock()
        self._signature: tuple = ()
        self._valid: dict[str, Workflow] = {}
        self._invalid: dict[str, str] = {}

    def _refresh(self) -> None:
        signature = tuple(_scan(directory) for directory in self.directories)
        with self._lock:
            if signature == self._signature:
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
