"""Workflows: list them, show one (parameters, models, LoRAs), and run a raw graph."""

from flask import Blueprint, jsonify, request, url_for

from api import sidecar, submission
from api.auth import requires
from api.exceptions import NotFound, RawGraphsDisabled, WorkflowUnusable
from api.graphs import catalog
from api.job import JobStatus
from api.routes.bodies import flag, json_body

bp = Blueprint("workflows", __name__)


@bp.get("/api/workflows")
def list_workflows():
    s = sidecar.current()
    names = s.workflows.names()
    return jsonify(
        workflows=names,
        total=len(names),
        default=s.config.default_workflow,
        invalid=s.workflows.invalid(),
    )


@bp.get("/api/workflows/<name>")
def show_workflow(name: str):
    s = sidecar.current()
    workflow = s.workflows.get(name)
    if workflow is None:
        reason = s.workflows.reason_invalid(name)
        if reason:
            raise WorkflowUnusable(
                f"Workflow '{name}' is not usable: {reason}",
                {"name": name, "valid": False, "reason": reason},
            )
        raise NotFound(f"Unknown workflow: {name}")
    described = workflow.describe()
    if flag(request.args.get("check", ""), "check"):
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
    s = sidecar.current()
    if not s.config.raw_graphs_enabled:
        raise RawGraphsDisabled(
            "Raw graph execution is switched off on this server (set RAW_GRAPHS_ENABLED=true to"
            " allow POST /api/workflows/execute)"
        )
    done = submission.execute_graph(json_body(), s)
    job = done.job
    status_url = url_for("status.job_status", job_id=job.id)
    payload = {
        "job_id": job.id,
        "prompt_id": job.prompt_id,
        "status": JobStatus.QUEUED.value,
        "prompt": job.prompt,
        "message": "Workflow queued",
        "workflow": job.workflow,
        "priority": job.options["priority"],
        "metadata": job.options.get("metadata"),
        "timeout_minutes": job.options.get("timeout_minutes"),
        "status_url": status_url,
    }
    if done.node_errors:
        payload["comfyui_node_errors"] = done.node_errors
    return jsonify(payload), 202, {"Location": status_url}
