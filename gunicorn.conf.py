"""gunicorn settings for the sidecar, from the environment."""

import os
import shutil
import sys

# Prometheus multiprocess mode (api/metrics.py): each worker keeps its metrics in files in one
# folder, and a scrape answered by any worker adds them up. The folder is named in the
# environment before prometheus_client is first imported (by each worker, when it builds its
# app), so this comes first: PROMETHEUS_MULTIPROC_DIR emptied, or a folder of the master's own,
# which on_exit removes (api/metrics_folder.py; the next start removes one a killed master left).
from api import metrics_folder  # imports nothing of the app's, nor prometheus_client

_metrics_dir_made = metrics_folder.prepare()

from api.config import Config  # noqa: E402 - after the metrics folder is in the environment
from api.exceptions import ConfigError  # noqa: E402
from api.sqlite_store import check_location  # noqa: E402

try:
    _config = Config.from_env()
    # Said once, before any worker starts, instead of a traceback from every worker.
    check_location(_config.database_path)
except ConfigError as exc:
    sys.exit(f"comfy-sidecar: {exc}")
# API_HOST, unless no API keys are set: then loopback only (see Config.bind_host).
bind = f"{_config.bind_host}:{_config.api_port}"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this container may use
    except AttributeError:
        return os.cpu_count() or 1


# One worker per core, at most 4: the sidecar mostly waits (on ComfyUI, on clients), every
# worker holds its own copy of the app (about 50 MB), and threads serve the waiting.
workers = int(os.environ.get("GUNICORN_WORKERS") or min(4, _cores()))
# Threads let one worker hold slow clients (long polls, event streams, downloads without
# nginx) without blocking others. gunicorn's gthread worker, whose idle main loop wakes every
# few seconds instead of every second (api/gunicorn_idle.py).
worker_class = "api.gunicorn_idle.QuietThreadWorker"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
# A gthread worker keeps beating while its threads serve long requests, so this only restarts
# a worker that is stuck as a whole. Every call to ComfyUI has its own, shorter timeout.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 20
# Above the shipped nginx's upstream keepalive_timeout (4 s): the side that closes an idle
# connection first must be nginx, or a request sent on a closing connection fails with 502.
keepalive = 5
# Off behind the shipped nginx (ACCESS_LOG=false in docker-compose.yml), which logs each request.
accesslog = "-" if _config.access_log else None
errorlog = "-"
# The request id (the client's, or the one nginx made up) ties this line to nginx's log and to
# the error body; %(B)s is the body size, 0 when nginx sends an image via X-Accel-Redirect.
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms "%(a)s" rid=%({x-request-id}i)s'
loglevel = os.environ.get("LOG_LEVEL", "info")
# X-Forwarded-* are trusted by the app's ProxyFix, and only when TRUST_PROXY_HOPS says so.
# gunicorn's own default would trust X-Forwarded-Proto from any local client.
forwarded_allow_ips = ""
# No preload: each worker builds its own app, so tracker threads and SQLite connections are
# never created before a fork.
preload_app = False
# Each worker listens on a socket of its own and the kernel spreads new connections over them:
# on one shared socket, a burst of connections could all go to one worker (api/gunicorn_sockets.py).
reuse_port = True
# No control socket (gunicorn 25.1 and later: `gunicornc`, which the sidecar does not use): it is
# one path per user ($HOME/.gunicorn/gunicorn.ctl) for every gunicorn that user runs, and a
# thread in the master with asyncio loaded, stopped and started again around every fork (1.4 MB
# of the master's memory, docs/benchmarks.md). Signals still stop and reload gunicorn.
control_socket_disable = True


def on_starting(server):
    """A port in use fails here, before any worker binds its own socket; the master's loop,
    too, wakes every few seconds when idle (api/gunicorn_idle.py)."""
    from api.gunicorn_idle import quiet_master
    from api.gunicorn_sockets import PortInUse, check_free

    try:
        check_free(server.cfg.address)
    except PortInUse as exc:
        sys.exit(f"comfy-sidecar: {exc}")
    server.log.info("Each worker listens at %s (SO_REUSEPORT)", bind)
    quiet_master(server)


def worker_exit(server, worker):
    """Stop the worker's background threads (tracker, output index) and close its database:
    the tracker's lock is released at once, so another worker takes over without waiting."""
    from api.gunicorn_idle import sidecar_of

    sidecar = sidecar_of(worker)
    if sidecar is not None:
        sidecar.close()


def child_exit(server, worker):
    """A worker is gone: its live gauges stop counting (counters and histograms stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_dir_made:
        shutil.rmtree(_metrics_dir_made, ignore_errors=True)
