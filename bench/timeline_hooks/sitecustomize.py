"""Time stamps for bench/timeline.py, taken inside ComfyUI and the sidecar's processes.

bench/timeline.py puts this folder first on PYTHONPATH and names a folder in TIMELINE_DIR. A
process that then imports one of the modules in PATCHES wraps a few of its functions, each
writing `<unix time> <label>` to the process's own file in that folder. The functions are
wrapped from outside, right after their module is imported (a finder first on sys.meta_path), so
the product carries no timing code; without TIMELINE_DIR nothing is patched. Python runs the
first sitecustomize it finds: a process started with this folder on its path does not run its
installation's own (none of the bench's processes has one).
"""

from __future__ import annotations

import functools
import gc
import importlib.abc
import os
import sys
import time

_files: dict[int, int] = {}


def mark(label: str) -> None:
    """One line in this process's file (opened per process: gunicorn forks its workers); the
    bench's own process stamps its clients' steps with it too."""
    pid = os.getpid()
    fd = _files.get(pid)
    if fd is None:
        path = os.path.join(os.environ["TIMELINE_DIR"], f"{pid}.log")
        fd = _files[pid] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{time.time():.6f} {label}\n".encode())


def _around(owner, name: str, before: str | None = None, after: str | None = None) -> None:
    function = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if before:
            mark(before)
        try:
            return function(*args, **kwargs)
        finally:
            if after:
                mark(after)

    setattr(owner, name, wrapper)


def _stamp_full_collections(who: str) -> None:
    """Stamp the start and end of each full garbage collection of this process."""

    def collecting(phase, info):
        if info.get("generation") == 2:
            mark(f"{who} {'collects garbage' if phase == 'start' else 'has collected it'}")

    gc.callbacks.append(collecting)


def _comfyui_server(module) -> None:
    server = module.PromptServer
    send_sync = server.send_sync

    # Called by ComfyUI's executing thread the moment it has news; its event loop sends it.
    def timed(self, event, data, sid=None):
        end = event == "executing" and isinstance(data, dict) and data.get("node") is None
        mark(f"ComfyUI says {event}{' (end)' if end else ''}")
        return send_sync(self, event, data, sid)

    server.send_sync = timed

    # ComfyUI's run thread collects garbage every 10 s after a run (main.py's prompt_worker):
    # a full collection holds the interpreter lock, and so ComfyUI's event loop, meanwhile.
    _stamp_full_collections("ComfyUI")


def _gthread(module) -> None:
    _around(module.ThreadWorker, "handle", "gunicorn: a thread takes the request")
    # Called once the request's head is parsed; returns once the answer is written.
    _around(
        module.ThreadWorker,
        "handle_request",
        "gunicorn: the request is parsed",
        "gunicorn: the answer is written",
    )


def _flask(module) -> None:
    _around(module.Flask, "preprocess_request", None, "flask: its before_request hooks ran")
    _around(module.Flask, "dispatch_request", "flask: the view starts", "flask: the view returns")
    _around(module.Flask, "full_dispatch_request", None, "flask: the answer is ready")


def _comfyui_client(module) -> None:
    _around(module.ComfyUIClient, "submit", "sidecar: POST /prompt", "sidecar: ComfyUI answered")
    get = module.ComfyUIClient._get

    # Every GET the sidecar sends ComfyUI (/history, /queue, /system_stats, /object_info...):
    # rare steps, seen in the slow jobs of `--slowest`.
    def timed_get(self, path, *parts, **kwargs):
        mark(f"sidecar: GET {path}")
        try:
            return get(self, path, *parts, **kwargs)
        finally:
            mark(f"sidecar: GET {path} answered")

    module.ComfyUIClient._get = timed_get


def _reconciler(module) -> None:
    _around(module.Reconciler, "reconcile_once", "reconciler: a pass", "reconciler: pass done")


def _catalog(module) -> None:
    _around(module, "report", "catalog: workflows checked", "catalog: checked")


def _fleet(module) -> None:
    _around(module.Fleet, "heartbeat", "fleet: heartbeat", "fleet: heartbeat done")


def _tracker(module) -> None:
    handle_event = module.Tracker.handle_event

    def timed(self, kind, data):
        end = kind == "executing" and not (data or {}).get("node")
        mark(f"tracker reads {kind}{' (end)' if end else ''}")
        return handle_event(self, kind, data)

    module.Tracker.handle_event = timed

    # A worker's full collections hold the interpreter lock, and so every thread of it.
    _stamp_full_collections("sidecar")


def _sqlite_store(module) -> None:
    store = module.SQLiteJobStore
    _around(store, "create", None, "store: row written")
    _around(store, "mark_submitted", None, "store: submission recorded")
    _around(store, "mark_processing", None, "store: start recorded")
    _around(store, "finish", "store: finish", "store: finish announced")


def _postgres_store(module) -> None:
    store = module.PostgresJobStore
    _around(store, "create", None, "store: row written")
    _around(store, "create_claimed", None, "store: row written, claimed")
    _around(store, "claim", "store: claim", "store: claimed")
    _around(store, "mark_submitted", None, "store: submission recorded")
    _around(store, "mark_processing", "store: start", "store: start recorded")
    _around(store, "finish", "store: finish", "store: finish announced")


def _postgres_listener(module) -> None:
    _around(module.Listener, "_wake", "listener: a notification")


def _wakeup(module) -> None:
    _around(module.Subscribers, "wake_waiters", "waiters woken")


def _jobstore(module) -> None:
    _around(module.JobStore, "wait_for_end", None, "waiter: the job ended")


PATCHES = {
    "server": _comfyui_server,
    "gunicorn.workers.gthread": _gthread,
    "flask.app": _flask,
    "api.comfyui": _comfyui_client,
    "api.reconciler": _reconciler,
    "api.graphs.catalog": _catalog,
    "api.fleet": _fleet,
    "api.tracker": _tracker,
    "api.sqlite_store": _sqlite_store,
    "api.postgres_store": _postgres_store,
    "api.postgres_listener": _postgres_listener,
    "api.wakeup": _wakeup,
    "api.jobstore": _jobstore,
}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds a module of PATCHES with the finders after it, and patches it once executed."""

    def find_spec(self, name, path, target=None):
        patch = PATCHES.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        loader.exec_module = exec_and_patch
        return spec


if os.environ.get("TIMELINE_DIR"):
    sys.meta_path.insert(0, _AfterImport())
