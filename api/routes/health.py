"""Health probes: GET /api/health (the primary API's shape) and GET /health."""

import time

from flask import Blueprint, jsonify

from api import comfyui
from api.auth import requires
from api.jobs import JobStatus
from api.services import VERSION, services

bp = Blueprint("health", __name__)

# A probe must answer quickly even when ComfyUI hangs.
PROBE_TIMEOUT = (2.0, 5.0)


def _tracker_state() -> dict | None:
    found = services().store.get_meta("tracker")
    if found is None:
        return None
    state, updated = found
    return {**state, "last_seen_seconds_ago": round(time.time() - updated, 1)}


@bp.get("/api/health")
@requires("public")
def api_health():
    s = services()
    base = {"output_dir": str(s.config.comfyui_output_dir), "tracker": _tracker_state()}
    try:
        stats = s.client.system_stats(timeout=PROBE_TIMEOUT)
    except comfyui.ComfyUIError as exc:
        return jsonify(
            status="unhealthy",
            error="ComfyUI not responding",
            comfyui="disconnected",
            comfyui_url=s.config.comfyui_url,
            details=str(exc),
            **base,
        ), 503
    system = dict(stats.get("system") or {})
    system["devices"] = stats.get("devices") or []
    return jsonify(
        status="healthy",
        comfyui="connected",
        system=system,
        version=VERSION,
        jobs={
            "queued": s.store.count([JobStatus.QUEUED]),
            "processing": s.store.count([JobStatus.PROCESSING]),
        },
        **base,
    )


@bp.get("/health")
@requires("public")
def health():
    s = services()
    try:
        stats = s.client.system_stats(timeout=PROBE_TIMEOUT)
        available, comfy_version = True, (stats.get("system") or {}).get("comfyui_version")
    except comfyui.ComfyUIError:
        available, comfy_version = False, None
    # A liveness probe: the sidecar itself is up, whatever ComfyUI is doing (it may still be
    # loading). Readiness, which depends on ComfyUI, is /api/health.
    return jsonify(
        status="ok",
        comfyui_available=available,
        comfyui_version=comfy_version,
        version=VERSION,
    )
