"""A workflow: an API-format ComfyUI graph and the request parameters that fill it.

`Workflow.validate` checks a request against the parameters' JSON Schema (400 naming the field
and its range), `Workflow.render` returns a new graph with every value set (images chained,
scheduler swapped, LoRAs chained), and `Workflow.describe` is GET /api/workflows/<name>.
Workflows are built from their files by api/graphs/manifest.py; docs/workflows.md has the
format. Rendering edits a copy of the parsed graph; JSON is never assembled from strings.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from api.delivery_settings import WEBHOOK_EVENTS
from api.exceptions import InvalidRequest, LoraSpecError
from api.graphs import edit as g
from api.graphs import loras as lora_specs
from api.graphs.params import Param

SCHEMA_KEYWORDS = (
    "type",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "enum",
    "minLength",
    "maxLength",
    "pattern",
)
# Random seeds stay below 2**53 so JavaScript clients can hold them exactly.
RANDOM_SEED_LIMIT = 2**53 - 1
# Fields every request may carry besides the workflow's own parameters: they choose the
# workflow or say what to do with the result, and are stored with the job as its options.
# Where a job's events go (docs/integrations.md); on generate, execute and batches alike.
WEBHOOK_FIELDS = {
    "webhook_url": {
        "type": "string",
        "minLength": 1,
        "maxLength": 2048,
        "description": "POST the job's events here, signed per Standard Webhooks with the "
        "server's WEBHOOK_SECRET (default: WEBHOOK_URL). Must reach a public address unless "
        "WEBHOOK_ALLOWED_HOSTS allows it.",
    },
    "webhook_events": {
        "type": "array",
        "items": {"enum": list(WEBHOOK_EVENTS)},
        "uniqueItems": True,
        "description": "Events to send (default WEBHOOK_EVENTS: job.completed, job.failed, "
        "job.cancelled); job.progress is throttled to one per WEBHOOK_PROGRESS_INTERVAL.",
    },
}
REQUEST_FIELDS = {
    "workflow": {"type": "string", "maxLength": 128, "description": "Workflow to run."},
    "save_to_disk": {
        "type": "boolean",
        "description": "Also save the first image under the output directory as <filename>.png "
        "when the job completes.",
    },
    "filename": {
        "type": "string",
        "minLength": 1,
        "maxLength": 128,
        "pattern": "^[A-Za-z0-9][A-Za-z0-9._ -]*$",
        "description": "Name for save_to_disk (letters, digits, '.', '_', '-', space; no "
        "separators; .png is added). Implies save_to_disk.",
    },
    "timeout_minutes": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "Deadline from submission; past it the job is cancelled and fails "
        "(default and longest: JOB_TIMEOUT_MINUTES).",
    },
    "include_base64": {
        "type": "boolean",
        "description": "Include each finished image as base64 in the job's status (size-capped).",
    },
    **WEBHOOK_FIELDS,
}


@dataclass
class Workflow:
    """A loaded, checked workflow template."""

    name: str
    graph: dict
    params: dict[str, Param]
    fixed: list[tuple[str, str, Any]]
    ignored: dict[str, dict]
    description: str = ""
    models: list[dict] = field(default_factory=list)
    lora_anchor: g.Link | None = None
    lora_note: str = ""
    detected: bool = False
    _validator: Draft202012Validator | None = None

    @property
    def validator(self) -> Draft202012Validator:
        if self._validator is None:
            self._validator = Draft202012Validator(self.request_schema())
        return self._validator

    def request_schema(self) -> dict:
        properties: dict[str, dict] = dict(REQUEST_FIELDS)
        if self.lora_anchor is not None:
            properties["loras"] = lora_specs.REQUEST_SCHEMA
        for param in self.params.values():
            properties[param.name] = param.schema
        for name, spec in self.ignored.items():
            properties[name] = {k: v for k, v in spec.items() if k in SCHEMA_KEYWORDS}
        return {
            "type": "object",
            "properties": properties,
            "required": [p.name for p in self.params.values() if p.required],
            "additionalProperties": False,
        }

    def describe(self) -> dict:
        if self.lora_anchor is not None:
            node_id, index = self.lora_anchor
            loras = {
                "supported": True,
                "chained_after": f"{node_id}:{index}",
                "after_class": self.graph[node_id].get("class_type"),
                "node_class": "LoraLoaderModelOnly",
                "max": lora_specs.MAX_LORAS,
            }
        else:
            loras = {"supported": False, "reason": self.lora_note}
        return {
            "name": self.name,
            "description": self.description,
            "valid": True,
            "detected": self.detected,
            "parameters": {name: p.describe() for name, p in self.params.items()},
            "ignored_fields": {
                name: {k: v for k, v in spec.items() if k != "type"}
                for name, spec in self.ignored.items()
            },
            "loras": loras,
            "models": self.models,
            "fixed": {f"{n}.{i}": v for n, i, v in self.fixed},
            "nodes": {nid: node.get("class_type") for nid, node in self.graph.items()},
        }

    def per_request_inputs(self) -> set[tuple[str, str]]:
        """Inputs whose template value is a placeholder a request replaces (prompt, images)."""
        return {
            target
            for p in self.params.values()
            if p.required or p.kind == "images"
            for target in p.targets
        }

    def validate(self, request: dict) -> tuple[dict, dict]:
        """Check a request; return (parameter values with defaults, ignored fields with reasons).

        A request's `loras` come back parsed, as values["loras"] (a list of LoraSpec).
        """
        if not isinstance(request, dict):
            raise InvalidRequest("Request body must be a JSON object")
        for name, param in self.params.items():
            # The primary API's wording for an absent or blank prompt, kept exactly.
            value = request.get(name)
            if param.required and (value is None or (isinstance(value, str) and not value.strip())):
                raise InvalidRequest(f"Missing required field: {name}", {"field": name})
        errors = sorted(self.validator.iter_errors(request), key=_error_order)
        if errors:
            raise _explain(errors[0], self)
        values: dict[str, Any] = {}
        for name, param in self.params.items():
            if name in request:
                values[name] = request[name]
            elif param.random:
                values[name] = secrets.randbelow(RANDOM_SEED_LIMIT + 1)
            else:
                values[name] = param.default
            if param.schema.get("type") == "integer" and values[name] is not None:
                values[name] = int(values[name])
        if self.lora_anchor is not None:
            try:
                values["loras"] = lora_specs.from_request(request.get("loras") or [])
            except LoraSpecError as exc:
                raise InvalidRequest(exc.message, {"field": "loras"}) from None
        notes = {
            name: spec.get("reason", "not supported by this workflow")
            for name, spec in self.ignored.items()
            if name in request and request[name] not in (None, "", spec.get("neutral"))
        }
        return values, notes

    def render(self, values: dict, loras: list | tuple = ()) -> dict:
        """A new graph with every parameter and fixed value set, images and LoRAs chained.

        Image parameters must already hold LoadImage values (api/graphs/images.resolve).
        """
        graph = copy.deepcopy(self.graph)
        ordered = sorted(self.params.values(), key=lambda param: param.stage)
        for param in (p for p in ordered if p.stage == 0):
            if values.get(param.name) is not None:
                param.apply(graph, values[param.name])
        # Fixed values win over plain parameters; images and node swaps come after both.
        for node_id, input_name, value in self.fixed:
            graph[node_id]["inputs"][input_name] = value
        for param in (p for p in ordered if p.stage > 0):
            if values.get(param.name) is not None:
                param.apply(graph, values[param.name])
        if loras and self.lora_anchor is not None:
            g.insert_loras(graph, self.lora_anchor, loras)
        return graph


def _error_order(error: ValidationError) -> tuple:
    # Report unknown fields first, then problems in field order, so messages are stable.
    return (error.validator != "additionalProperties", list(error.absolute_path))


def _explain(error: ValidationError, workflow: Workflow) -> InvalidRequest:
    path = list(error.absolute_path)
    name = str(path[0]) if path else None
    schema = error.schema if isinstance(error.schema, dict) else {}
    allowed = {k: schema[k] for k in SCHEMA_KEYWORDS if k in schema}
    received = error.instance
    if isinstance(received, str) and len(received) > 100:
        received = received[:100] + "..."
    details = {"field": name, "allowed": allowed, "received": received}
    if len(path) > 1 and error.validator != "additionalProperties":
        index = path[1]
        what = schema.get("description") or error.message
        if error.validator in ("minLength", "maxLength", "minimum", "maximum", "type"):
            what = error.message
        return InvalidRequest(f"{name}[{index}]: {what}", {**details, "index": index})
    if error.validator in ("minItems", "maxItems"):
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        count = len(error.instance) if isinstance(error.instance, list) else "?"
        span = f"{lo} to {hi}" if hi is not None else f"at least {lo}"
        return InvalidRequest(f"{name} takes {span} items (got {count})", details)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        return InvalidRequest(
            f"Unknown field: {extra[0]} (workflow '{workflow.name}' accepts: {', '.join(known)})",
            {"field": extra[0], "allowed_fields": known},
        )
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        return InvalidRequest(f"Missing required field: {missing}", {"field": missing})
    if error.validator == "type":
        wanted = schema.get("type")
        return InvalidRequest(
            f"{name} must be of type {wanted} (got {type(error.instance).__name__})",
            details,
        )
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        span = f"between {lo} and {hi}" if lo is not None and hi is not None else error.message
        return InvalidRequest(f"{name} must be {span} (got {error.instance})", details)
    if error.validator == "multipleOf":
        return InvalidRequest(
            f"{name} must be a multiple of {schema['multipleOf']} (got {error.instance})",
            details,
        )
    if error.validator == "enum":
        choices = ", ".join(map(str, schema["enum"]))
        return InvalidRequest(f"{name} must be one of: {choices}", details)
    if error.validator in ("minLength", "maxLength"):
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        return InvalidRequest(
            f"{name} must be {lo} to {hi} characters long (got {len(error.instance)})",
            details,
        )
    return InvalidRequest(f"{name}: {error.message}", details)
