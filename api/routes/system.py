"""GET /api/system (GPU, versions, models) and GET /api/status (the service itself)."""

import time

from flask import Blueprint, jsonify

from api import auth, sidecar, system
from api.exceptions import ComfyUIError
from api.job import UNFINISHED, iso
from api.openapi import COMFYUI_ERRORS, operation
from api.routes.health import PROBE_TIMEOUT
from api.schemas import BOOLEAN, INTEGER, NUMBER, OBJECT, STRING, array, nullable, obj

bp = Blueprint("system", __name__)


@bp.get("/api/system")
@operation(
    "The GPU host through ComfyUI: devices (VRAM in MB), model files per folder, versions, RAM,"
    " and which workflows have their model files",
    {
        200: obj(
            {
                "devices": array(
                    obj(
                        {
                            "name": nullable(STRING),
                            "vram": nullable(NUMBER),
                            "vram_free": nullable(NUMBER),
                        }
                    )
                ),
                "models": {"type": "object", "additionalProperties": nullable(array(STRING))},
                "templates": {"type": "object", "additionalProperties": OBJECT},
                "versions": OBJECT,
                "ram": OBJECT,
                "system": OBJECT,
                "nodes": array(OBJECT),
            },
            optional=("nodes",),
        )
    },
    errors=COMFYUI_ERRORS,
    description="In a cluster, `devices` lists every live node's devices (each with its `node`)"
    " and `nodes` every node; models, templates and versions are this node's.",
)
def system_info():
    s = sidecar.current()
    stats = s.client.system_stats()
    found = system.models(s.client)
    devices = system.devices(stats)
    extra = {}
    if s.fleet is not None:
        overview = s.fleet.overview()
        devices = [
            {**device, "node": info.id}
            for info in overview.live()
            for device in system.devices({"devices": info.devices})
        ]
        extra["nodes"] = overview.as_list()
    return jsonify(
        **extra,
        devices=devices,
        models=found,
        templates=system.template_readiness(s.workflows, found),
        versions={**system.versions(stats), "sidecar": sidecar.VERSION},
        ram=system.ram(stats),
        system=system.system_block(stats, auth.caller().sees_server_paths),
    )


@bp.get("/api/status")
@operation(
    "The service itself: uptime, last use, default LoRAs, ComfyUI's queue depth, job counts",
    {
        200: obj(
            {
                "status": {"const": "running"},
                "version": STRING,
                "start_time": STRING,
                "uptime": NUMBER,
                "last_used": nullable(STRING),
                "loras": array(OBJECT),
                "comfyui_available": BOOLEAN,
                "comfyui_version": nullable(STRING),
                "comfyui_queue": nullable(obj({"running": INTEGER, "pending": INTEGER})),
                "queue_depth": INTEGER,
                "jobs": {"type": "object", "additionalProperties": INTEGER},
            }
        )
    },
)
def service_status():
    s = sidecar.current()
    comfy_version, available, depth = None, False, None
    try:
        stats = s.client.system_stats(timeout=PROBE_TIMEOUT)
        comfy_version = system.versions(stats)["comfyui"]
        queue = s.client.queue()
        available = True
        depth = {"running": len(queue.running), "pending": len(queue.pending)}
    except ComfyUIError:
        pass
    now = time.time()
    counts = s.store.counts()
    return jsonify(
        status="running",
        version=sidecar.VERSION,
        start_time=iso(s.started_at),
        uptime=round(now - s.started_at, 1),
        last_used=iso(s.store.last_created_at()),
        loras=list(s.config.default_loras),
        comfyui_available=available,
        comfyui_version=comfy_version,
        comfyui_queue=depth,
        queue_depth=sum(counts[status] for status in UNFINISHED),
        jobs=counts,
    )
