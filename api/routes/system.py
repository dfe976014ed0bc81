"""GET /api/system (GPU, versions, models) and GET /api/status (the service itself)."""

import time

from flask import Blueprint, jsonify

from api import comfyui, jobs, system
from api.jobs import JobStatus
from api.routes.health import PROBE_TIMEOUT
from api.services import VERSION, services

bp = Blueprint("system", __name__)


@bp.get("/api/system")
def system_info():
    s = services()
    stats = s.client.system_stats()
    found = system.models(s.client)
    return jsonify(
        devices=system.devices(stats),
        models=found,
        templates=system.template_readiness(s.workflows, found),
        versions={**system.versions(stats), "sidecar": VERSION},
        ram=system.ram(stats),
        system=stats.get("system") or {},
    )


@bp.get("/api/status")
def service_status():
    s = services()
    comfy_version, available, depth = None, False, None
    try:
        stats = s.client.system_stats(timeout=PROBE_TIMEOUT)
        comfy_version = system.versions(stats)["comfyui"]
        queue = s.client.queue()
        available = True
        depth = {"running": len(queue["queue_running"]), "pending": len(queue["queue_pending"])}
    except comfyui.ComfyUIError:
        pass
    now = time.time()
    return jsonify(
        status="running",
        version=VERSION,
        start_time=jobs.iso(s.started_at),
        uptime=round(now - s.started_at, 1),
        last_used=jobs.iso(s.store.last_created_at()),
        loras=list(getattr(s.config, "default_loras", ()) or ()),
        comfyui_available=available,
        comfyui_version=comfy_version,
        comfyui_queue=depth,
        queue_depth=s.store.count([JobStatus.QUEUED, JobStatus.PROCESSING]),
        jobs={status.value: s.store.count([status]) for status in JobStatus},
    )
