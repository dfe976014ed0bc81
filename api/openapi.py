"""The OpenAPI 3.1 document, assembled from what each view declares about itself.

Every view carries an `@operation(...)` next to its route: a summary, the schema of each 2xx
answer, the request body and parameters, and the error statuses it can answer with. The schemas
are the code's own (the job status shape beside Job.to_status, the raw-graph body that
validates requests, the workflow manifests' parameter schemas), so the document cannot drift
from what the API does: tests/unit/test_openapi.py checks that every route is documented, and
the schema-driven fuzz test checks real answers against these schemas.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from api.job import STATUS_SCHEMA, SUMMARY_SCHEMA
from api.schemas import ANY, STRING, TIMESTAMP, nullable, obj, ref

# --- what views declare ---------------------------------------------------------------------

# Statuses with their meaning, for the error answers a view lists.
ERROR_MEANINGS = {
    400: "Bad request: a field, parameter or body the API cannot use",
    401: "No API key, or an unknown one",
    403: "The key's scope does not cover this endpoint; or, before any key is looked at, the"
    " caller may not reach the API at all: another machine without API keys (not_local), a"
    " host name the API does not answer to (host_not_allowed), a write sent by another"
    " site's page (cross_site_request)",
    404: "No such job, image or workflow",
    406: "The job the request waited for (?wait=) completed without the image asked for"
    " (Accept: image/...): its status in the body",
    409: "Conflict with the current state",
    413: "Request body or upload too large",
    415: "A body of a type this endpoint does not take (JSON endpoints take application/json"
    " only; uploads multipart/form-data with a PNG, JPEG or WebP image)",
    422: "ComfyUI (or the workflow's files) cannot run this",
    426: "This URL is a WebSocket",
    429: "Too many requests, unfinished jobs, open streams or wrong keys: retry after"
    " Retry-After seconds",
    500: "The job the request waited for (?wait=) failed: its error and status in the body",
    501: "This server cannot do that",
    507: "The output folder refused the write (permissions, a full disk)",
    502: "ComfyUI answered with an error",
    503: "ComfyUI or the job store (a cluster's PostgreSQL) is not responding",
    504: "ComfyUI did not answer in time, or the job the request waited for (?wait=) reached"
    " its deadline",
}
# Every call that reaches ComfyUI can meet these.
COMFYUI_ERRORS = (502, 503, 504)
# Every endpoint behind an API key can answer these (auth, scope, rate limit).
GUARDED_ERRORS = (401, 403, 429)
# Every endpoint reads the job store, which in a cluster is a PostgreSQL that can be away.
STORE_ERRORS = (503,)
# Every endpoint, public ones included, can answer these: who may reach the API at all
# (api/access.py) and wrong keys from one address (api/auth.py) are checked before the view.
ACCESS_ERRORS = (403, 429)

BodyFactory = Callable[["DocumentContext"], dict]


@dataclass
class DocumentContext:
    """What the document may depend on besides the code: the installed workflows."""

    workflows: Any  # api.graphs.library.WorkflowLibrary
    default_workflow: str
    max_timeout_minutes: float = 60.0  # JOB_TIMEOUT_MINUTES: the longest deadline a request sets


@dataclass
class Operation:
    """One view's entry in the document."""

    summary: str
    # status -> (description, schema, media type or types)
    responses: dict[int, tuple[str, dict | None, str | tuple[str, ...]]]
    errors: tuple[int, ...] = ()
    parameters: list[dict] = field(default_factory=list)
    body: dict | BodyFactory | None = None
    body_media: str = "application/json"
    body_required: bool = True
    description: str = ""

    def render(self, context: DocumentContext, public: bool, writes: bool = False) -> dict:
        responses: dict[str, dict] = {}
        for status, (description, schema, media) in self.responses.items():
            entry: dict[str, Any] = {"description": description}
            if isinstance(media, Mapping):  # a schema for each type
                entry["content"] = {kind: {"schema": each} for kind, each in media.items()}
            elif schema is not None:
                kinds = (media,) if isinstance(media, str) else media
                entry["content"] = {kind: {"schema": schema} for kind in kinds}
            responses[str(status)] = entry
        errors = set(self.errors) | set(STORE_ERRORS) | set(ACCESS_ERRORS)
        if not public:
            errors |= set(GUARDED_ERRORS)
        if writes or self.body is not None:
            errors.add(415)  # a body of another type than the one declared (api/access.py)
        for status in sorted(errors):
            responses.setdefault(
                str(status),
                {
                    "description": ERROR_MEANINGS[status],
                    "content": {"application/json": {"schema": ref("Error")}},
                },
            )
        op: dict[str, Any] = {"summary": self.summary, "responses": responses}
        if self.description:
            op["description"] = self.description
        if self.parameters:
            op["parameters"] = self.parameters
        if self.body is not None:
            schema = self.body(context) if callable(self.body) else self.body
            op["requestBody"] = {
                "required": self.body_required,
                "content": {self.body_media: {"schema": schema}},
            }
        if public:
            op["security"] = []
        return op


def operation(
    summary: str,
    ok: Mapping[int, Any],
    *,
    errors: Iterable[int] = (),
    parameters: Iterable[dict] = (),
    body: dict | BodyFactory | None = None,
    body_media: str = "application/json",
    body_required: bool = True,
    description: str = "",
) -> Callable:
    """Declare a view's document entry. `ok` maps each success status to a JSON schema, or to
    (description, schema, media type) when the answer is not JSON or needs saying."""
    responses = {}
    for status, answer in ok.items():
        if isinstance(answer, tuple):
            responses[status] = answer
        else:
            responses[status] = ("OK" if status < 300 else "", answer, "application/json")

    def mark(view: Callable) -> Callable:
        view.openapi = Operation(
            summary,
            responses,
            tuple(errors),
            list(parameters),
            body,
            body_media,
            body_required,
            description,
        )
        return view

    return mark


def path_param(name: str, description: str = "") -> dict:
    param = {"name": name, "in": "path", "required": True, "schema": STRING}
    if description:
        param["description"] = description
    return param


def query_param(name: str, schema: dict, description: str = "") -> dict:
    param = {"name": name, "in": "query", "schema": schema}
    if description:
        param["description"] = description
    return param


JOB_ID = path_param("job_id", "The job's id, as POST /api/generate answered it")

# --- shared components ------------------------------------------------------------------------

ERROR_SCHEMA = obj(
    {
        "error": STRING,
        "code": STRING,
        "details": ANY,
        "request_id": nullable(STRING),
        "timestamp": TIMESTAMP,
    },
    optional=("details",),
    description="The one error shape: `error` for people, `code` for programs; extra fields "
    "(job_id, ...) may sit beside them.",
)


# --- the document -----------------------------------------------------------------------------

# Pages and their assets are not API operations.
UNDOCUMENTED_BLUEPRINTS = ("docs.", "ui.")


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+(?:\([^)]*\))?:)?([a-z_]+)>", r"{\1}", rule)


def operations(app: Flask) -> dict[tuple[str, str], tuple[Callable, Operation | None]]:
    """(method, OpenAPI path) -> (view, its declared operation) for every API route."""
    found: dict[tuple[str, str], tuple[Callable, Operation | None]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith(UNDOCUMENTED_BLUEPRINTS):
            continue
        view = app.view_functions[rule.endpoint]
        declared = getattr(view, "openapi", None)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            key = (method.lower(), _openapi_path(rule.rule))
            # Two rules can share a path (the WebSocket and its plain-HTTP answer): the one
            # that declares the operation describes it.
            if key not in found or found[key][1] is None:
                found[key] = (view, declared)
    return found


def document(app: Flask, context: DocumentContext, version: str) -> dict:
    """The whole document; raises if a route declares no operation."""
    from api.auth import PUBLIC, declared_scope

    paths: dict[str, dict] = {}
    for (method, path), (view, declared) in sorted(operations(app).items()):
        if declared is None:
            raise LookupError(f"{method.upper()} {path} has no @operation")
        public = declared_scope(view) == PUBLIC
        writes = method in ("post", "put", "patch", "delete")
        paths.setdefault(path, {})[method] = declared.render(context, public, writes)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "comfy-sidecar",
            "version": version,
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
            "schemas": dict(COMPONENTS),
        },
    }


# Shapes that several answers share, referenced as #/components/schemas/<name>.
COMPONENTS: dict[str, dict] = {
    "Error": ERROR_SCHEMA,
    "Job": STATUS_SCHEMA,
    "JobSummary": SUMMARY_SCHEMA,
}
