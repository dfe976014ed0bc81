"""The per-app objects every route uses, kept in app.extensions (never module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from api import saving
from api.comfyui import ComfyUIClient
from api.config import Config
from api.jobs import JobStore
from api.outputs import OutputIndex
from api.tracker import Tracker
from api.watching import Watchers
from api.workflows import WorkflowLibrary

VERSION = "0.1.0"
EXTENSION = "sidecar"


@dataclass
class Services:
    config: Config
    store: JobStore
    workflows: WorkflowLibrary
    client: ComfyUIClient
    client_id: str
    outputs: OutputIndex
    started_at: float
    watchers: Watchers
    tracker: Tracker | None = None

    def on_finished(self, job: dict) -> None:
        """Work due when a job completes, whichever process notices it first."""
        saving.save_on_completion(job, self.config.comfyui_output_dir, self.store)


def services() -> Services:
    return current_app.extensions[EXTENSION]
