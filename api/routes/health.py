"""Health probes: GET /api/health (readiness, the primary API's shape) and GET /health
(liveness).

Both are public, so a probe needs no key. What they say beyond healthy or not depends on who
asks: without a key (when keys are configured) nothing else, not even versions; with a key,
versions, devices and job counts; the operator (an admin key, or this machine without keys)
also reads the paths, ComfyUI's address and the tracker's state.
"""

import time

from flask import Blueprint, jsonify

from api import auth, sidecar, system
from api.auth import requires
from api.exceptions import ComfyUIError, Unhealthy
from api.job import UNFINISHED
from api.openapi import operation
from api.schemas import BOOLEAN, INTEGER, OBJECT, STRING, nullable, obj

bp = Blueprint("health", __name__)

TRACKER = nullable(OBJECT)

# A probe must answer quickly even when ComfyUI hangs.
PROBE_TIMEOUT = (2.0, 5.0)


def _tracker_state(s: sidecar.Sidecar) -> dict | None:
    found = s.store.get_meta(s.config.tracker_key)
    if found is None:
        return None
    state, updated = found
    return {**state, "last_seen_seconds_ago": round(time.time() - updated, 1)}


@bp.get("/api/health")
@requires("public")
@operation(
    "Readiness: is ComfyUI answering? (503 in the error shape, status unhealthy, when not)",
    {
        200: obj(
            {
                "status": {"const": "healthy"},
                "comfyui": {"const": "connected"},
                "system": OBJECT,
                "version": STRING,
                "jobs": obj({"queued": INTEGER, "processing": INTEGER}),
                "output_dir": STRING,
                "tracker": TRACKER,
            },
            optional=("system", "version", "jobs", "output_dir", "tracker"),
        )
    },
    errors=(503,),
    description="Without a key (when API keys are configured) only status and comfyui; with"
    " one, also versions, devices and job counts; for an admin key (or without keys) also"
    " the output folder and the tracker.",
)
def api_health():
    s = sidecar.current()
    caller = auth.current_caller()
    operator = caller is not None and caller.sees_server_paths
    base = {"output_dir": str(s.config.comfyui_output_dir), "tracker": _tracker_state(s)}
    try:
        stats = s.client.system_stats(timeout=PROBE_TIMEOUT)
    except ComfyUIError as exc:
        # The one error shape, with the primary API's "status": "unhealthy" beside "error".
        extra = {"comfyui_url": s.config.comfyui_url, **base} if operator else {}
        raise Unhealthy(
            "ComfyUI not responding",
            exc.message if operator else None,
            status="unhealthy",
            comfyui="disconnected",
            **extra,
        ) from None
    if caller is None:
        return jsonify(status="healthy", comfyui="connected")
    block = system.system_block(stats, operator)
    block["devices"] = stats.get("devices") or []
    return jsonify(
        status="healthy",
        comfyui="connected",
        system=block,
        version=sidecar.VERSION,
        jobs=s.store.counts(UNFINISHED),
        **(base if operator else {}),
    )


@bp.get("/health")
@requires("public")
@operation(
    "Liveness: the sidecar runs (200 even while ComfyUI is down or loading)",
    {
        200: obj(
            {
                "status": {"const": "ok"},
                "comfyui_available": BOOLEAN,
                "comfyui_version": nullable(STRING),
                "version": STRING,
            },
            optional=("comfyui_version", "version"),
        )
    },
    description="The versions only for a caller with a key (or without keys configured).",
)
def health():
    s = sidecar.current()
    try:
        stats = s.client.system_stats(timeout=PROBE_TIMEOUT)
        available, comfy_version = True, (stats.get("system") or {}).get("comfyui_version")
    except ComfyUIError:
        available, comfy_version = False, None
    # A liveness probe: the sidecar itself is up, whatever ComfyUI is doing (it may still be
    # loading). Readiness, which depends on ComfyUI, is /api/health.
    if auth.current_caller() is None:
        return jsonify(status="ok", comfyui_available=available)
    return jsonify(
        status="ok",
        comfyui_available=available,
        comfyui_version=comfy_version,
        version=sidecar.VERSION,
    )
