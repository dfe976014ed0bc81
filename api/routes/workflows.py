"""Workflows: list them, show one (parameters, models, LoRAs), and run a raw graph."""

from flask import Blueprint, jsonify, request, url_for

from api import auth, sidecar, submission
from api.auth import requires
from api.exceptions import NotFound, RawGraphsDisabled, WorkflowUnusable
from api.graphs import catalog
from api.job import STATUS_WORD, JobStatus
from api.openapi import COMFYUI_ERRORS, operation, path_param, query_param
from api.routes import awaiting
from api.routes.bodies import flag, json_body
from api.schemas import ANY, BOOLEAN, INTEGER, NUMBER, OBJECT, STRING, array, nullable, obj
from api.submission import RAW_SCHEMA

bp = Blueprint("workflows", __name__)

DESCRIBED = obj(
    {
        "name": STRING,
        "description": STRING,
        "valid": {"const": True},
        "detected": BOOLEAN,
        "parameters": {"type": "object", "additionalProperties": OBJECT},
        "ignored_fields": OBJECT,
        "loras": obj({"supported": BOOLEAN}),
        "models": array(OBJECT),
        "fixed": OBJECT,
        "nodes": {"type": "object", "additionalProperties": STRING},
        "comfyui_check": obj({"runnable": BOOLEAN, "problems": array(OBJECT)}),
    },
    optional=("comfyui_check",),
)
QUEUED_GRAPH = obj(
    {
        "job_id": STRING,
        "prompt_id": nullable(STRING),
        "status": STATUS_WORD,
        "prompt": STRING,
        "message": STRING,
        "workflow": STRING,
        "priority": {"enum": ["normal", "high"]},
        "metadata": nullable(OBJECT),
        "timeout_minutes": nullable(NUMBER),
        "status_url": STRING,
        "comfyui_node_errors": ANY,
    },
    optional=("comfyui_node_errors",),
)


@bp.get("/api/workflows")
@operation(
    "The workflows this sidecar can run, the default, and those whose files are unusable",
    {
        200: obj(
            {
                "workflows": array(STRING),
                "total": INTEGER,
                "default": STRING,
                "invalid": {"type": "object", "additionalProperties": STRING},
                "runs_on": {"type": "object", "additionalProperties": array(STRING)},
            },
            optional=("runs_on",),
        )
    },
    description="In a cluster, `runs_on` names the live nodes whose ComfyUI can run each "
    "workflow (its node types and model files are there); a job of a workflow no live node "
    "can run waits, with the reason in its status.",
)
def list_workflows():
    s = sidecar.current()
    names = s.workflows.names()
    extra = {}
    if s.fleet is not None:
        overview = s.fleet.overview()
        extra["runs_on"] = {name: overview.runs_on(name) for name in names}
    return jsonify(
        workflows=names,
        total=len(names),
        default=s.config.default_workflow,
        invalid=s.workflows.invalid(),
        **extra,
    )


@bp.get("/api/workflows/<name>")
@operation(
    "A workflow's parameters (JSON Schema), LoRA support, model files and nodes",
    {200: DESCRIBED},
    errors=(404, 422, *COMFYUI_ERRORS),
    parameters=[
        path_param("name"),
        query_param(
            "check",
            BOOLEAN,
            "Also check against the running ComfyUI whether it can run this workflow",
        ),
    ],
)
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
@operation(
    "Run a whole API-format graph as a tracked job (needs RAW_GRAPHS_ENABLED)",
    {
        200: awaiting.COMPLETED,
        202: ("Queued; follow status_url (also in Location)", QUEUED_GRAPH, "application/json"),
    },
    errors=(400, *awaiting.ERRORS, 413, 422, *COMFYUI_ERRORS),
    parameters=[awaiting.WAIT_PARAM],
    body=lambda context: submission.with_timeout_cap(RAW_SCHEMA, context.max_timeout_minutes),
)
def execute():
    s = sidecar.current()
    if not s.config.raw_graphs_enabled:
        raise RawGraphsDisabled(
            "Raw graph execution is switched off on this server (set RAW_GRAPHS_ENABLED=true to"
            " allow POST /api/workflows/execute)"
        )
    with awaiting.waiting() as wait:
        done = submission.execute_graph(json_body(), s, auth.caller())
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
        return awaiting.answer(job, payload, wait)
