"""The workflows directory: every workflow in it, re-read whenever a file in it changes.

New or edited files are picked up on the next request, without a restart. A workflow whose
files cannot be used is kept aside with the reason (GET /api/workflows lists it as invalid).
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


class WorkflowLibrary:
    """The workflows directory, re-read whenever a file in it changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._signature: tuple = ()
        self._valid: dict[str, Workflow] = {}
        self._invalid: dict[str, str] = {}

    def _scan_signature(self) -> tuple:
        try:
            entries = [
                (e.name, e.stat().st_mtime_ns, e.stat().st_size)
                for e in os.scandir(self.directory)
                if e.name.endswith(".json") and e.is_file()
            ]
        except FileNotFoundError:
            return ()
        return tuple(sorted(entries))

    def _refresh(self) -> None:
        signature = self._scan_signature()
        with self._lock:
            if signature == self._signature:
                return
            valid: dict[str, Workflow] = {}
            invalid: dict[str, str] = {}
            names = sorted(
                entry[0][: -len(".json")]
                for entry in signature
                if not entry[0].endswith(MANIFEST_SUFFIX)
            )
            for name in names:
                try:
                    valid[name] = load(self.directory, name)
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
