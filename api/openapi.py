"""The OpenAPI 3.1 document of the whole API, built from the code it describes.

Request schemas come from the workflow manifests (the same JSON Schema that validates requests)
and the request option fields; tests/unit/test_openapi.py checks that every route of the app is
documented and nothing else is, and the schema-driven fuzz test sends what this describes.
"""

from __future__ import annotations

import re

from flask import Flask

from api.graphs.library import WorkflowLibrary
from api.graphs.workflow import REQUEST_FIELDS
from api.job import CONTRACT_FIELDS
from api.sidecar import VERSION


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "Error (the one error shape)")
ERRORS = {
    "400": ERROR,
    "401": ERROR,
    "403": ERROR,
    "404": ERROR,
    "429": ERROR,
    "503": ERROR,
}
ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
PAGE = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
]
OBJECT = {"type": "object"}


def _op(summary: str, responses: dict, public: bool = False, **extra) -> dict:
    op = {"summary": summary, "responses": {**responses, **ERRORS}, **extra}
    if public:
        op["security"] = []
    return op


def _generate_body(library: WorkflowLibrary, default: str) -> dict:
    """Every field any workflow accepts, with the default workflow's ranges first."""
    properties: dict = {}
    names = [default, *[n for n in library.names() if n != default]]
    for name in names:
        workflow = library.get(name)
        if workflow is None:
            continue
        for field, schema in workflow.request_schema()["properties"].items():
            properties.setdefault(field, schema)
    properties.update({k: {kk: vv for kk, vv in v.items()} for k, v in REQUEST_FIELDS.items()})
    properties.setdefault("prompt", {"type": "string"})
    return {
        "type": "object",
        "required": ["prompt"],
        "properties": properties,
        "description": "The fields of the chosen workflow (GET /api/workflows/{name}); "
        "unknown fields are a 400.",
    }


def document(app: Flask, library: WorkflowLibrary, default_workflow: str) -> dict:
    job = {
        "type": "object",
        "required": list(CONTRACT_FIELDS),
        "properties": {
            "job_id": {"type": "string"},
            "status": {"enum": ["queued", "processing", "completed", "failed", "cancelled"]},
            "prompt": {"type": "string"},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "current_step": {"type": ["integer", "null"]},
            "total_steps": {"type": ["integer", "null"]},
            "output_image": {"type": ["string", "null"]},
            "error": {"type": ["string", "null"]},
            "created_at": {"type": "string"},
        },
    }
    paths = {
        "/health": {"get": _op("Liveness probe", {"200": _json(OBJECT)}, public=True)},
        "/api/health": {
            "get": _op("Readiness: is ComfyUI answering?", {"200": _json(OBJECT)}, public=True)
        },
        "/api/generate": {
            "post": _op(
                "Queue an image job",
                {
                    "202": _json(_ref("Accepted"), "Queued"),
                    "409": ERROR,
                    "413": ERROR,
                    "422": ERROR,
                    "504": ERROR,
                },
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {"schema": _generate_body(library, default_workflow)}
                    },
                },
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "maxLength": 128},
                    }
                ],
            )
        },
        "/api/status": {
            "get": _op("The service: uptime, versions, queue depth", {"200": _json(OBJECT)})
        },
        "/api/status/{job_id}": {
            "get": _op(
                "A job's status (optionally a long poll)",
                {"200": _json(_ref("Job"))},
                parameters=[
                    ID,
                    {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0}},
                    {"name": "since", "in": "query", "schema": {"type": "number"}},
                ],
            )
        },
        "/api/status/{job_id}/events": {
            "get": _op(
                "Server-sent events of a job: snapshot, update..., end",
                {
                    "200": {
                        "description": "text/event-stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                },
                parameters=[ID],
            )
        },
        "/ws/progress/{job_id}": {
            "get": _op(
                "WebSocket of a job's progress: {job_id, status, progress, step, max_steps,"
                " message, image_url, error} on connect and on every change; closed after the"
                " final state",
                {
                    "101": {"description": "Switching Protocols: the WebSocket is open"},
                    "426": _json(_ref("Error"), "A plain HTTP request: this URL is a WebSocket"),
                },
                parameters=[ID],
            )
        },
        "/api/image/{filename}": {
            "get": _op(
                "An image by file name (or by job id with ?index=)",
                {
                    "200": {
                        "description": "image bytes",
                        "content": {
                            "image/png": {"schema": {"type": "string", "format": "binary"}}
                        },
                    }
                },
                parameters=[
                    {
                        "name": "filename",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {"name": "subfolder", "in": "query", "schema": {"type": "string"}},
                    {"name": "index", "in": "query", "schema": {"type": "integer"}},
                ],
            )
        },
        "/api/save/{job_id}": {
            "post": _op(
                "Copy a job's image to <output dir>/<filename>.png",
                {"201": _json(OBJECT, "Saved"), "409": ERROR},
                parameters=[ID, {"name": "index", "in": "query", "schema": {"type": "integer"}}],
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["filename"],
                                "properties": {
                                    "filename": {"type": "string"},
                                    "rename": {"type": "boolean"},
                                },
                            }
                        }
                    },
                },
            )
        },
        "/api/queue": {
            "get": _op("ComfyUI's queue and the sidecar's unfinished jobs", {"200": _json(OBJECT)})
        },
        "/api/queue/{job_id}": {
            "delete": _op("Cancel one job", {"200": _json(OBJECT), "409": ERROR}, parameters=[ID])
        },
        "/api/queue/clear": {
            "post": _op(
                "Cancel every pending job",
                {"200": _json(OBJECT)},
                requestBody={
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"include_running": {"type": "boolean"}},
                            }
                        }
                    },
                },
            )
        },
        "/api/outputs": {
            "get": _op("Images, newest first", {"200": _json(OBJECT)}, parameters=PAGE)
        },
        "/api/history": {
            "get": _op(
                "Finished jobs, ComfyUI's history shape", {"200": _json(OBJECT)}, parameters=PAGE
            )
        },
        "/api/jobs": {
            "get": _op(
                "The sidecar's jobs",
                {"200": _json(OBJECT)},
                parameters=[*PAGE, {"name": "status", "in": "query", "schema": {"type": "string"}}],
            )
        },
        "/api/workflows": {"get": _op("Workflow names", {"200": _json(OBJECT)})},
        "/api/workflows/{name}": {
            "get": _op(
                "A workflow's parameters",
                {"200": _json(OBJECT)},
                parameters=[
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            )
        },
        "/api/upload": {
            "post": _op(
                "Store an input image (PNG, JPEG, WebP) in ComfyUI's input folder",
                {"200": _json(OBJECT), "413": ERROR, "415": ERROR},
                requestBody={
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["image"],
                                "properties": {
                                    "image": {"type": "string", "format": "binary"},
                                    "overwrite": {"type": "string"},
                                },
                            }
                        }
                    },
                },
            )
        },
        "/api/workflows/execute": {
            "post": _op(
                "Run a whole API-format graph as a tracked job (RAW_GRAPHS_ENABLED)",
                {"202": _json(OBJECT, "Queued"), "422": ERROR},
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["workflow"],
                                "properties": {
                                    "workflow": {"type": "object"},
                                    "priority": {"enum": ["normal", "high"]},
                                    "metadata": {"type": "object"},
                                    "timeout_minutes": {"type": "number"},
                                },
                            }
                        }
                    },
                },
            )
        },
        "/api/system": {"get": _op("GPU, versions, RAM, model files", {"200": _json(OBJECT)})},
    }
    extra = app.extensions.get("openapi_paths", {})
    paths.update(extra)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "comfy-sidecar",
            "version": VERSION,
            "description": "Prompt in, finished image out, on a co-located ComfyUI.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "code": {"type": "string"},
                        "details": {},
                        "request_id": {"type": ["string", "null"]},
                        "timestamp": {"type": "string"},
                    },
                },
                "Accepted": {
                    "type": "object",
                    "required": ["job_id", "prompt_id", "status", "prompt", "message"],
                    "properties": {
                        "job_id": {"type": "string"},
                        "prompt_id": {"type": ["string", "null"]},
                        "status": {"type": "string"},
                        "prompt": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
                "Job": job,
            },
        },
    }


def flask_rules_as_paths(app: Flask) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route of the app, for checking the document."""
    found = set()
    for rule in app.url_map.iter_rules():
        # The documentation and the browser client are pages, not API operations.
        if rule.endpoint == "static" or rule.endpoint.startswith(("docs.", "ui.")):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found.add((method.lower(), path))
    return found
