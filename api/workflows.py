"""Workflow templates: an API-format ComfyUI graph plus a manifest of request parameters.

A workflow is two files in the workflows directory:
  <name>.json            the graph, exactly as ComfyUI's "Save (API Format)" writes it
  <name>.manifest.json   which request field sets which node input, with type, default, range

Parameter specs use JSON Schema keywords (type, minimum, maximum, multipleOf, enum, minLength,
maxLength, pattern) so a request is validated by jsonschema, and a client can build a form from
GET /api/workflows/<name>. Rendering sets values in a copy of the parsed graph; JSON is never
assembled from strings. The directory is re-scanned on use, so new or edited files are picked up
without a restart.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
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
        "maximum": 10080,
        "description": "Deadline from submission; past it the job is cancelled and fails "
        "(default JOB_TIMEOUT_MINUTES).",
    },
    "include_base64": {
        "type": "boolean",
        "description": "Include each finished image as base64 in the job's status (size-capped).",
    },
}


class WorkflowError(ValueError):
    """A workflow file or manifest that cannot be used; the message says why."""


class RequestInvalid(ValueError):
    """A request that does not fit the workflow's parameters."""

    def __init__(self, message: str, field_name: str | None, details: dict) -> None:
        super().__init__(message)
        self.message = message
        self.field = field_name
        self.details = details


@dataclass
class Param:
    """One request field and the node inputs it sets."""

    name: str
    schema: dict
    targets: list[tuple[str, str]]
    default: Any = None
    required: bool = False
    random: bool = False
    description: str = ""

    def describe(self) -> dict:
        out = {"name": self.name, **self.schema, "required": self.required}
        if self.random:
            out["default"] = None
            out["random_when_missing"] = True
        elif self.default is not None:
            out["default"] = self.default
        out["description"] = self.description
        out["sets"] = [f"{node}.{inp}" for node, inp in self.targets]
        return out


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
    _validator: Draft202012Validator | None = None

    @property
    def validator(self) -> Draft202012Validator:
        if self._validator is None:
            self._validator = Draft202012Validator(self.request_schema())
        return self._validator

    def request_schema(self) -> dict:
        properties: dict[str, dict] = dict(REQUEST_FIELDS)
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
        return {
            "name": self.name,
            "description": self.description,
            "parameters": {name: p.describe() for name, p in self.params.items()},
            "ignored_fields": {
                name: {k: v for k, v in spec.items() if k != "type"}
                for name, spec in self.ignored.items()
            },
            "models": self.models,
            "nodes": {nid: node.get("class_type") for nid, node in self.graph.items()},
        }

    def validate(self, request: dict) -> tuple[dict, dict]:
        """Check a request; return (parameter values with defaults, ignored fields with reasons)."""
        if not isinstance(request, dict):
            raise RequestInvalid("Request body must be a JSON object", None, {})
        for name, param in self.params.items():
            # The primary API's wording for an absent or blank prompt, kept exactly.
            value = request.get(name)
            if param.required and (value is None or (isinstance(value, str) and not value.strip())):
                raise RequestInvalid(f"Missing required field: {name}", name, {"field": name})
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
        notes = {
            name: spec.get("reason", "not supported by this workflow")
            for name, spec in self.ignored.items()
            if name in request and request[name] not in (None, "", spec.get("neutral"))
        }
        return values, notes

    def render(self, values: dict) -> dict:
        """A new graph with every parameter and fixed value set."""
        graph = copy.deepcopy(self.graph)
        for name, param in self.params.items():
            value = values.get(name)
            if value is None:
                continue
            for node_id, input_name in param.targets:
                graph[node_id]["inputs"][input_name] = value
        for node_id, input_name, value in self.fixed:
            graph[node_id]["inputs"][input_name] = value
        return graph


def _error_order(error: ValidationError) -> tuple:
    # Report unknown fields first, then problems in field order, so messages are stable.
    return (error.validator != "additionalProperties", list(error.absolute_path))


def _explain(error: ValidationError, workflow: Workflow) -> RequestInvalid:
    path = list(error.absolute_path)
    name = str(path[0]) if path else None
    schema = error.schema if isinstance(error.schema, dict) else {}
    allowed = {k: schema[k] for k in SCHEMA_KEYWORDS if k in schema}
    received = error.instance
    if isinstance(received, str) and len(received) > 100:
        received = received[:100] + "..."
    details = {"field": name, "allowed": allowed, "received": received}
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        return RequestInvalid(
            f"Unknown field: {extra[0]} (workflow '{workflow.name}' accepts: {', '.join(known)})",
            extra[0],
            {"field": extra[0], "allowed_fields": known},
        )
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        return RequestInvalid(f"Missing required field: {missing}", missing, {"field": missing})
    if error.validator == "type":
        wanted = schema.get("type")
        return RequestInvalid(
            f"{name} must be of type {wanted} (got {type(error.instance).__name__})",
            name,
            details,
        )
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        span = f"between {lo} and {hi}" if lo is not None and hi is not None else error.message
        return RequestInvalid(f"{name} must be {span} (got {error.instance})", name, details)
    if error.validator == "multipleOf":
        return RequestInvalid(
            f"{name} must be a multiple of {schema['multipleOf']} (got {error.instance})",
            name,
            details,
        )
    if error.validator == "enum":
        choices = ", ".join(map(str, schema["enum"]))
        return RequestInvalid(f"{name} must be one of: {choices}", name, details)
    if error.validator in ("minLength", "maxLength"):
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        return RequestInvalid(
            f"{name} must be {lo} to {hi} characters long (got {len(error.instance)})",
            name,
            details,
        )
    return RequestInvalid(f"{name}: {error.message}", name, details)


def _parse_target(text: Any, graph: dict, where: str) -> tuple[str, str]:
    if not isinstance(text, str) or "." not in text:
        raise WorkflowError(f"{where}: target {text!r} is not '<node_id>.<input>'")
    node_id, _, input_name = text.rpartition(".")
    node = graph.get(node_id)
    if node is None:
        raise WorkflowError(f"{where}: target {text!r} names node {node_id!r}, not in the graph")
    if input_name not in node.get("inputs", {}):
        raise WorkflowError(
            f"{where}: target {text!r}: node {node_id} ({node.get('class_type')}) "
            f"has no input {input_name!r}"
        )
    return node_id, input_name


def _check_graph(graph: Any, name: str) -> dict:
    if not isinstance(graph, dict) or not graph:
        raise WorkflowError(f"{name}.json is not an API-format graph (expected a JSON object)")
    if "nodes" in graph and "links" in graph:
        raise WorkflowError(
            f"{name}.json is a UI workflow; export it with 'Save (API Format)' instead"
        )
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"{name}.json: node {node_id!r} has no class_type")
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"{name}.json: node {node_id!r} inputs is not an object")
        node.setdefault("inputs", {})
    return graph


def build(name: str, graph: Any, manifest: Any) -> Workflow:
    """Check a graph and its manifest together and build a Workflow."""
    graph = _check_graph(graph, name)
    if not isinstance(manifest, dict):
        raise WorkflowError(f"{name}{MANIFEST_SUFFIX} must be a JSON object")
    params: dict[str, Param] = {}
    for pname, spec in (manifest.get("parameters") or {}).items():
        where = f"{name}{MANIFEST_SUFFIX} parameter {pname!r}"
        if pname in REQUEST_FIELDS:
            raise WorkflowError(f"{where}: the name is reserved")
        if not isinstance(spec, dict) or spec.get("type") not in (
            "string",
            "integer",
            "number",
            "boolean",
        ):
            raise WorkflowError(f"{where}: needs a type of string, integer, number or boolean")
        targets = [_parse_target(t, graph, where) for t in spec.get("targets", [])]
        schema = {k: spec[k] for k in SCHEMA_KEYWORDS if k in spec}
        default = spec.get("default")
        if default is None and targets and not spec.get("random"):
            node_id, input_name = targets[0]
            current = graph[node_id]["inputs"][input_name]
            default = None if isinstance(current, list) else current
        if default is not None:
            problems = list(Draft202012Validator(schema).iter_errors(default))
            if problems:
                raise WorkflowError(f"{where}: default {default!r}: {problems[0].message}")
        params[pname] = Param(
            name=pname,
            schema=schema,
            targets=targets,
            default=default,
            required=bool(spec.get("required")),
            random=bool(spec.get("random")),
            description=spec.get("description", ""),
        )
    fixed = []
    for target, value in (manifest.get("fixed") or {}).items():
        node_id, input_name = _parse_target(target, graph, f"{name}{MANIFEST_SUFFIX} fixed")
        fixed.append((node_id, input_name, value))
    ignored = manifest.get("ignored") or {}
    if not isinstance(ignored, dict) or not all(isinstance(v, dict) for v in ignored.values()):
        raise WorkflowError(f"{name}{MANIFEST_SUFFIX}: 'ignored' maps field names to objects")
    overlap = set(ignored) & set(params)
    if overlap:
        raise WorkflowError(f"{name}{MANIFEST_SUFFIX}: {sorted(overlap)} both used and ignored")
    return Workflow(
        name=name,
        graph=graph,
        params=params,
        fixed=fixed,
        ignored=ignored,
        description=manifest.get("description", ""),
        models=list(manifest.get("models") or []),
    )


def load(directory: Path, name: str) -> Workflow:
    """Load <name>.json and <name>.manifest.json from a directory."""
    graph_path = directory / f"{name}.json"
    manifest_path = directory / f"{name}{MANIFEST_SUFFIX}"
    try:
        graph = json.loads(graph_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{graph_path.name} is not valid JSON: {exc}") from None
    if not manifest_path.exists():
        raise WorkflowError(f"{name} has no manifest ({manifest_path.name})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{manifest_path.name} is not valid JSON: {exc}") from None
    return build(name, graph, manifest)


class WorkflowLibrary:
    """The workflows directory, re-read whenever a file in it changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._signature: tuple = ()
        self._valid: dict[str, Workflow] = {}
        self._invalid: dict[str, str] = {}

    def _scan_signature(self) -> tuple:
        try:
            entries = [
                (e.name, e.stat().st_mtime_ns, e.stat().st_size)
                for e in os.scandir(self.directory)
                if e.name.endswith(".json") and e.is_file()
            ]
        except FileNotFoundError:
            return ()
        return tuple(sorted(entries))

    def _refresh(self) -> None:
        signature = self._scan_signature()
        with self._lock:
            if signature == self._signature:
                return
            valid: dict[str, Workflow] = {}
            invalid: dict[str, str] = {}
            names = sorted(
                entry[0][: -len(".json")]
                for entry in signature
                if not entry[0].endswith(MANIFEST_SUFFIX)
            )
            for name in names:
                try:
                    valid[name] = load(self.directory, name)
                except (OSError, WorkflowError) as exc:
                    invalid[name] = str(exc)
                    log.warning("workflow %s is not usable: %s", name, exc)
            self._valid, self._invalid, self._signature = valid, invalid, signature

    def names(self) -> list[str]:
        self._refresh()
        return sorted(self._valid)

    def invalid(self) -> dict[str, str]:
        self._refresh()
        return dict(self._invalid)

    def get(self, name: str) -> Workflow | None:
        self._refresh()
        return self._valid.get(name)

    def reason_invalid(self, name: str) -> str | None:
        self._refresh()
        return self._invalid.get(name)


def dumps(graph: dict) -> str:
    return json.dumps(graph, separators=(",", ":"))
