"""The per-app objects every route uses, kept in app.extensions (never module globals)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from api import saving
from api.comfyui import ComfyUIClient
from api.config import Config
from api.graphs.library import WorkflowLibrary
from api.job import Job
from api.job_watch import Watchers
from api.jobstore import JobStore
from api.metrics import Metrics
from api.object_storage import ObjectStorage
from api.outbox import Outbox
from api.outcome import Finisher
from api.outputs import OutputIndex
from api.tracker import Tracker

if TYPE_CHECKING:
    from api.fleet import Fleet
    from api.status_docs import StatusDocs

log = logging.getLogger(__name__)

VERSION = "0.1.0"
EXTENSION = "sidecar"


@dataclass
class Sidecar:
    """Everything one app instance (one gunicorn worker) holds: settings, store, client..."""

    config: Config
    store: JobStore
    workflows: WorkflowLibrary
    client: ComfyUIClient
    client_id: str
    outputs: OutputIndex
    started_at: float
    watchers: Watchers
    finisher: Finisher
    outbox: Outbox
    storage: ObjectStorage
    metrics: Metrics
    tracker: Tracker | None = None
    fleet: Fleet | None = None  # this node's part in a cluster (a shared store)

    def on_finished(self, job: Job) -> None:
        """Work due when a job completes, whichever process settles it (a Finisher
        follow-up)."""
        saving.save_on_completion(job, self.config.comfyui_output_dir, self.store)

    @property
    def status_docs(self) -> StatusDocs | None:
        """The status files nginx answers plain polls from (None: none here)."""
        return self.tracker.status_docs if self.tracker is not None else None

    def object_url(self):
        """The output_urls builder for job statuses (None when uploads are off)."""
        return self.storage.url if self.storage.enabled else None

    def close(self) -> None:
        """Stop the background threads and release connections (worker exit, tests)."""
        if self.tracker is not None:
            self.tracker.stop()
        self.outbox.stop()
        self.outputs.stop()
        self.store.close()


def current() -> Sidecar:
    """The Sidecar of the app handling the current request."""
    return current_app.extensions[EXTENSION]
