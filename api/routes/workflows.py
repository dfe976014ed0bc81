"""Workflows: list them, show one (parameters, models, LoRAs), and run a raw graph."""

from flask import Blueprint, jsonify, request, url_for

from api import catalog, jobs, raw
from api.auth import requires
from api.errors import ApiError, bad_request, not_found
from api.services import services

bp = Blueprint("workflows", __name__)


@bp.get("/api/workflows")
def list_workflows():
    library = services().workflows
    names = library.names()
    return jsonify(
        workflows=names,
        total=len(names),
        default=services().config.default_workflow,
        invalid=library.invalid(),
    )


@bp.get("/api/workflows/<name>")
def show_workflow(name: str):
    s = services()
    workflow = s.workflows.get(name)
    if workflow is None:
        reason = s.workflows.reason_invalid(name)
        if reason:
            raise ApiError(
                422,
                f"Workflow '{name}' is not usable: {reason}",
                "workflow_invalid",
                {"name": name, "valid": False, "reason": reason},
            )
        raise not_found(f"Unknown workflow: {name}")
    described = workflow.describe()
    if request.args.get("check", "").lower() in ("1", "true", "yes"):
        # Against the running ComfyUI: can it run this workflow, and if not, why not?
        problems = catalog.runnable(
            workflow.graph, s.client.cached_object_info(), workflow.per_request_inputs()
        )
        described["comfyui_check"] = {
            "runnable": not problems,
            "problems": [p.as_dict() for p in problems],
        }
    return jsonify(described)


@bp.post("/api/workflows/execute")
@requires("admin")
def execute():
    s = services()
    if not s.config.raw_graphs_enabled:
        raise raw.disabled()
    body = request.get_json(silent=True)
    if body is None:
        raise bad_request("Request body must be JSON (Content-Type: application/json)")
    job, partial = raw.execute(body, s)
    status_url = url_for("status.job_status", job_id=job["id"])
    payload = {
        "job_id": job["id"],
        "prompt_id": job["prompt_id"],
        "status": jobs.JobStatus.QUEUED.value,
        "prompt": job["prompt"],
        "message": "Workflow queued",
        "workflow": job["workflow"],
        "priority": job["options"]["priority"],
        "metadata": job["options"].get("metadata"),
        "timeout_minutes": job["options"].get("timeout_minutes"),
        "status_url": status_url,
    }
    if partial:
        payload["comfyui_node_errors"] = partial
    return jsonify(payload), 202, {"Location": status_url}
