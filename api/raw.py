"""POST /api/workflows/execute: a whole API-format graph from the client, run as a tracked job.

The graph is sent as given (no template, no parameters); what the sidecar adds is the job
record, `priority` ("high" puts it at the front of ComfyUI's queue), `metadata` stored and
returned with the job, and `timeout_minutes`, after which the tracker stops the job in ComfyUI
and ends it failed. Because such a graph can run any node installed in ComfyUI, the endpoint
answers 403 unless RAW_GRAPHS_ENABLED is set.
"""

from __future__ import annotations

import json

from jsonschema import Draft202012Validator

from api import detect, generation
from api.errors import ApiError, bad_request
from api.services import Services
from api.workflows import WorkflowError, check_graph

WORKFLOW_NAME = "(raw graph)"
METADATA_MAX_BYTES = 16 * 1024
TIMEOUT_MAX_MINUTES = 24 * 60
SCHEMA = {
    "type": "object",
    "properties": {
        "workflow": {"type": "object", "minProperties": 1},
        "priority": {"enum": ["normal", "high"]},
        "metadata": {"type": "object"},
        "timeout_minutes": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": TIMEOUT_MAX_MINUTES,
        },
    },
    "required": ["workflow"],
    "additionalProperties": False,
}
_VALIDATOR = Draft202012Validator(SCHEMA)


def disabled() -> ApiError:
    return ApiError(
        403,
        "Raw graph execution is switched off on this server (set RAW_GRAPHS_ENABLED=true to"
        " allow POST /api/workflows/execute)",
        "raw_graphs_disabled",
    )


def _check_body(body: object) -> dict:
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    for error in sorted(_VALIDATOR.iter_errors(body), key=lambda e: list(e.absolute_path)):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties":
            extra = sorted(set(body) - set(SCHEMA["properties"]))
            raise bad_request(
                f"Unknown field: {extra[0]} (accepted: {', '.join(SCHEMA['properties'])})",
                {"field": extra[0], "allowed_fields": list(SCHEMA["properties"])},
            )
        if error.validator == "required":
            raise bad_request(
                "Missing required field: workflow (an API-format graph, as ComfyUI's 'Save (API"
                " Format)' writes it)",
                {"field": "workflow"},
            )
        name = str(path[0]) if path else None
        raise bad_request(f"{name}: {error.message}", {"field": name})
    metadata = body.get("metadata")
    if metadata is not None and len(json.dumps(metadata)) > METADATA_MAX_BYTES:
        raise bad_request(
            f"metadata is larger than {METADATA_MAX_BYTES // 1024} KB", {"field": "metadata"}
        )
    return body


def execute(body: object, s: Services) -> tuple[dict, dict]:
    """Check and queue a raw graph; returns (job row, ComfyUI's partial node_errors)."""
    body = _check_body(body)
    try:
        graph = check_graph(body["workflow"], "workflow")
    except WorkflowError as exc:
        message = str(exc).replace("workflow.json", "workflow")
        raise bad_request(message, {"field": "workflow"}, code="invalid_graph") from None
    s.client.check_node_classes(graph)
    options = {"raw_graph": True, "priority": body.get("priority", "normal")}
    for key in ("metadata", "timeout_minutes"):
        if body.get(key) is not None:
            options[key] = body[key]
    job, partial, _ = generation.enqueue(
        s,
        workflow=WORKFLOW_NAME,
        prompt=detect.prompt_text(graph),
        params={},
        notes={},
        graph=graph,
        options=options,
        front=options["priority"] == "high",
    )
    return job, partial
