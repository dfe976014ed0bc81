"""The per-app objects every route uses, kept in app.extensions (never module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from api.comfyui import ComfyUIClient
from api.config import Config
from api.jobs import JobStore
from api.tracker import Tracker
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
    tracker: Tracker | None = None


def services() -> Services:
    return current_app.extensions[EXTENSION]
