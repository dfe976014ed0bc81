"""gunicorn settings for the sidecar, from the environment."""

import os

from api.config import Config

_config = Config.from_env()
# API_HOST, unless no API keys are set: then loopback only (see Config.bind_host).
bind = f"{_config.bind_host}:{_config.api_port}"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
# Threads let one worker hold slow clients (long polls, downloads) without blocking others.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
# No request should take this long; it also bounds a worker stuck on a hung call.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 20
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# No preload: each worker builds its own app, so tracker threads and SQLite connections are
# never created before a fork.
preload_app = False
