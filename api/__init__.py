"""comfy-sidecar: a REST API that turns a prompt into a finished image on a ComfyUI server.

Importing the package imports nothing else: gunicorn's master reads only the configuration
(gunicorn.conf.py) and never builds the app, so it does not hold Flask, requests and the rest
in memory beside its workers; each worker imports them when it builds its app (api/app.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from api.config import Config


def create_app(config: Config | None = None, **overrides: Any) -> Flask:
    """Build the app (api/app.py). Configuration is read there, from the environment."""
    from api.app import create_app as build

    return build(config, **overrides)
