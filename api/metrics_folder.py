"""The folder of Prometheus' multiprocess files (api/metrics.py) when PROMETHEUS_MULTIPROC_DIR
names none: made by gunicorn's master in the temporary folder, and removed as it exits.

A master that is killed (SIGKILL, the kernel's OOM killer, a host that loses power) removes
nothing, and every such start left a folder behind. The folder's name carries its master's pid,
so the next start removes the folders of masters that are gone. Imported by gunicorn.conf.py
before prometheus_client is: this module imports nothing of the app's.

gunicorn reads its configuration again on a reload (SIGHUP), in the same master, whose new
workers must count on from the old ones' files: a reload leaves the folder as it is.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

PREFIX = "comfy-sidecar-metrics-"
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)-[^/]+")
# Set by the master once its folder is ready: "<pid> <the folder it made, or nothing>".
PREPARED = "COMFY_SIDECAR_METRICS_MASTER"


def prepare(
    environ: MutableMapping[str, str] = os.environ, parent: str | None = None
) -> str | None:
    """Name the folder in PROMETHEUS_MULTIPROC_DIR, ready for this master's workers: the one
    named there emptied (an earlier run's values would be added in), or a new one of its own.
    Returns the folder made here (in `parent`, else the temporary folder), for the master to
    remove as it exits."""
    folder = environ.get("PROMETHEUS_MULTIPROC_DIR")
    pid, _, made = environ.get(PREPARED, "").partition(" ")
    if folder and pid == str(os.getpid()):
        return made or None  # a reload: the counts so far stay
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):
            stale.unlink()
        made = ""
    else:
        made = folder = make(parent)
        environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    environ[PREPARED] = f"{os.getpid()} {made}"
    return made or None


def make(parent: str | None = None) -> str:
    """A new folder of this process's own, after removing those of dead masters."""
    remove_stale(Path(parent or tempfile.gettempdir()))
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)


def remove_stale(parent: Path) -> list[Path]:
    """Remove this user's folders in `parent` whose master is gone. Returns those removed.

    A folder named after this process's own pid is stale too: this process has not made its
    folder yet, so it is a former process with the same pid (in a container restarted after a
    kill, the master is pid 1 again). A pid that a live process now holds keeps its folder:
    a few kilobytes kept too long, rather than a live sidecar's metrics removed."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed  # an unreadable temporary folder: mkdtemp will say what is wrong
    for entry in entries:
        found = _NAME.fullmatch(entry.name)
        if found is None:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue  # removed meanwhile
        pid = int(found.group(1))
        if pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process holds the pid
    return True
