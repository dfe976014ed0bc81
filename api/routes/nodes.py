"""GET /api/nodes: the fleet view of a cluster (admin)."""

from flask import Blueprint, jsonify

from api import sidecar
from api.auth import requires
from api.openapi import operation
from api.schemas import BOOLEAN, INTEGER, NUMBER, OBJECT, STRING, array, nullable, obj

bp = Blueprint("nodes", __name__)

NODE = obj(
    {
        "id": STRING,
        "comfyui_url": STRING,
        "api_url": STRING,
        "alive": BOOLEAN,
        "health": {"enum": ["healthy", "comfyui_unreachable", "lost"]},
        "comfyui_reachable": BOOLEAN,
        "comfyui_version": nullable(STRING),
        "devices": array(OBJECT),
        "workflows": array(STRING),
        "cannot_run": {"type": "object", "additionalProperties": STRING},
        "current_job": nullable(STRING),
        "held": INTEGER,
        "max_pending": INTEGER,
        "jobs_done": INTEGER,
        "last_heartbeat_seconds_ago": NUMBER,
        "started_at": NUMBER,
    },
    optional=("api_url",),
)


@bp.get("/api/nodes")
@requires("admin")
@operation(
    "Every node of the cluster: its ComfyUI and GPU, health, current job, jobs done, last"
    " heartbeat (one store for one node: an empty list, clustered false)",
    {200: obj({"clustered": BOOLEAN, "nodes": array(NODE), "alive": INTEGER})},
)
def nodes():
    s = sidecar.current()
    if s.fleet is None:
        return jsonify(clustered=False, nodes=[], alive=0)
    listed = s.fleet.overview().as_list()
    return jsonify(clustered=True, nodes=listed, alive=sum(1 for n in listed if n["alive"]))
