"""The app factory: the configuration read once, the per-app objects, the hooks and routes."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Flask
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from api import access, auth, errors, routes, status_docs
from api.comfyui import ComfyUIClient
from api.config import Config
from api.exceptions import ComfyUIError, ConfigError
from api.graphs import catalog
from api.graphs.library import WorkflowLibrary
from api.idle import IdleUnloader
from api.job_watch import Watchers
from api.jobstore import open_store
from api.metrics import Metrics
from api.object_storage import ObjectStorage
from api.outbox import Outbox
from api.outcome import Finisher
from api.outputs import OutputIndex
from api.sidecar import EXTENSION, VERSION, Sidecar
from api.status_docs import StatusDocs
from api.strict_json import StrictJSONProvider
from api.tracker import Tracker

log = logging.getLogger("api")


def create_app(config: Config | None = None, **overrides: Any) -> Flask:
    """Build the app. Configuration is read here, from the environment, never at import."""
    config = config or Config.from_env(**overrides)
    _configure_logging(config)
    # No app-wide static route: api/routes/ui.py serves api/static/ (public, like the page).
    app = Flask(__name__, static_folder=None)
    app.config["DEBUG"] = config.debug
    # Request bodies are parsed strictly: no NaN/Infinity, no absurd nesting (a 400, not a 500).
    app.json = StrictJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = int(config.max_request_mb * 1024 * 1024)
    if config.trust_proxy_hops > 0:
        # Only behind a proxy we run: otherwise any client could forge its address and scheme.
        hops = config.trust_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops)
    # "//etc/passwd" must reach the path checks as written, not be redirected to a cleaned URL.
    app.url_map.merge_slashes = False

    store = open_store(config)
    # One client_id per deployment: ComfyUI sends a prompt's events only to the WebSocket whose
    # clientId submitted it, and any worker may submit while the elected tracker listens.
    client_id = store.setdefault_meta("client_id", f"sidecar-{uuid.uuid4().hex}")
    client = ComfyUIClient(config.comfyui_url, config.comfyui_timeout)
    client.object_info_max_age = config.catalog_max_age
    client.object_info_refresh_interval = config.catalog_refresh_interval
    workflows = WorkflowLibrary(*config.workflow_dirs)
    metrics = Metrics(store, config.prometheus_multiproc_dir)
    storage = ObjectStorage(config)
    outbox = Outbox(config, store, storage, metrics)
    # Every way a job ends goes through this: its deliveries are written with it, then the
    # follow-ups run once.
    finisher = Finisher(store, plan=outbox.plan)
    sidecar = Sidecar(
        config=config,
        store=store,
        workflows=workflows,
        client=client,
        client_id=client_id,
        outputs=OutputIndex(config.comfyui_output_dir),
        started_at=time.time(),
        watchers=Watchers(config.max_watchers, config.max_watchers_per_key),
        finisher=finisher,
        outbox=outbox,
        storage=storage,
        metrics=metrics,
    )
    finisher.after += [metrics.job_finished, sidecar.on_finished]
    finisher.owed = outbox.wake
    if store.shared:
        from api.fleet import Fleet  # cluster mode only

        if not (config.outputs_shared or config.node_url or config.s3_bucket):
            raise ConfigError(
                "JOB_STORE_URL is a shared store (a cluster), but nothing says how a node"
                " serves the images another node made: set S3_BUCKET (object storage),"
                " OUTPUTS_SHARED=true (every node sees every image in COMFYUI_OUTPUT_DIR) or"
                " NODE_URL on every node (the other nodes fetch from it); see docs/scaling.md"
            )
        sidecar.fleet = Fleet(config, store, client, client_id, workflows, VERSION, finisher)
    if config.tracker_enabled:
        idle = IdleUnloader(config.idle_unload_minutes, store, client, metrics)
        sidecar.tracker = Tracker(
            config,
            store,
            client,
            client_id,
            finisher,
            on_progress=outbox.progress,
            metrics=metrics,
            idle=idle if idle.enabled else None,
            fleet=sidecar.fleet,
            status_docs=_status_docs(config, sidecar),
        )
    app.extensions[EXTENSION] = sidecar

    origins = [o.strip() for o in config.cors_origins.split(",") if o.strip()]
    if origins:
        CORS(
            app,
            origins=origins,
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
            expose_headers=[
                "X-Request-ID",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "Retry-After",
                "Location",
            ],
        )
    errors.init_app(app)
    # Before keys are looked at: only this machine without keys, our own host names, and no
    # writes from other sites' pages.
    access.init_app(app, config)
    keys = auth.parse_keys(config.api_keys)
    limiter = auth.init_app(
        app,
        keys,
        config.rate_limit,
        config.auth_failure_limit,
        limits=bool(config.rate_limit or config.rate_limit_generate),
        image_url_secret=config.image_url_secret,
    )
    access.init_body_types(app)
    app.extensions["limiter"] = limiter
    routes.init_app(app)
    if config.rate_limit_generate:
        limiter.limit(config.rate_limit_generate)(app.view_functions["generate.generate"])

    _announce(config, client, workflows, keys)
    if sidecar.tracker is not None:
        sidecar.tracker.start()
        # The outbox senders run beside every tracker candidate (any number of processes may:
        # deliveries are claimed with a lease).
        outbox.start()
    return app


def _status_docs(config: Config, sidecar: Sidecar) -> StatusDocs | None:
    """The status files nginx answers polls from, where the deployment allows them (an
    emptied folder where it does not); None without STATUS_DOCS_DIR."""
    if not config.status_docs_dir:
        return None
    presigns = sidecar.storage.enabled and not config.s3_public_base_url
    reason = status_docs.refusal(config, presigns)
    if reason:
        log.info("no status files in %s: %s", config.status_docs_dir, reason)
    return StatusDocs(
        Path(config.status_docs_dir), sidecar.store, sidecar.object_url(), enabled=not reason
    )


def _configure_logging(config: Config) -> None:
    level = "DEBUG" if config.debug else config.log_level.upper()
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    logging.getLogger("api").setLevel(level)


def _announce(
    config: Config, client: ComfyUIClient, workflows: WorkflowLibrary, keys: tuple
) -> None:
    """Say at startup what the sidecar found, and what to do when ComfyUI is missing."""
    if keys:
        log.info(
            "API keys required (%d configured: %s)",
            len(keys),
            ", ".join(f"{key.name} ({key.scope})" for key in keys),
        )
    elif config.allow_unauthenticated:
        log.warning(
            "no API_KEYS and ALLOW_UNAUTHENTICATED=true: anyone who reaches %s:%s can use the GPU",
            config.api_host,
            config.api_port,
        )
        if not config.allowed_hosts.strip():
            log.warning(
                "ALLOWED_HOSTS is empty: any web page a user of this network opens can reach"
                " the API by DNS rebinding; list the host names it is reached by"
            )
    elif access.is_loopback_name(config.api_host):
        log.warning(
            "no API_KEYS: the API is open, and answers only callers on this machine (API_HOST"
            " %s). Set API_KEYS (see docs/security.md) before serving other machines.",
            config.api_host,
        )
    else:
        log.warning(
            "no API_KEYS: the API is open, so it listens on 127.0.0.1 only (not %s) and"
            " answers only callers on this machine. Set API_KEYS (see docs/security.md) or"
            " ALLOW_UNAUTHENTICATED=true to listen on %s.",
            config.api_host,
            config.api_host,
        )
    for name, reason in workflows.invalid().items():
        log.warning("workflow %s skipped: %s", name, reason)
    if workflows.get(config.default_workflow) is None:
        log.warning(
            "the default workflow %r is not available in %s",
            config.default_workflow,
            ", ".join(map(str, config.workflow_dirs)),
        )
    if config.default_loras:
        log.info(
            "default LoRAs for every job: %s",
            ", ".join(f"{s.name} ({s.strength:g})" for s in config.default_loras),
        )
    try:
        stats = client.system_stats(timeout=(2.0, 5.0))
        version = (stats.get("system") or {}).get("comfyui_version", "unknown version")
        log.info("ComfyUI %s answers at %s", version, config.comfyui_url)
    except ComfyUIError:
        log.warning(
            "ComfyUI is not answering at %s. The sidecar runs anyway (GET /api/health answers"
            " 503 until it does). Start ComfyUI there (python main.py --listen %s --port %s in"
            " a ComfyUI checkout), or point COMFYUI_HOST/COMFYUI_PORT at one; `make comfyui`"
            " starts a CPU-only ComfyUI for trying the sidecar out.",
            config.comfyui_url,
            config.comfyui_host,
            config.comfyui_port,
        )
        return
    try:
        # Which workflows this ComfyUI can run, and why not (missing node types, model files).
        catalog.log_report(workflows, client.cached_object_info())
    except ComfyUIError as exc:
        log.warning("could not read ComfyUI's /object_info to check the workflows: %s", exc)
