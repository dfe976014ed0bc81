"""Workflow templates: an API-format ComfyUI graph plus a manifest of request parameters.

A workflow is one or two files in the workflows directory:
  <name>.json            the graph, exactly as ComfyUI's "Save (API Format)" writes it
  <name>.manifest.json   optional: which request field sets which node input, with type,
                         default and range. Without it (or with "detect": true) the parameters
                         are detected from the graph (api/detect.py) and the manifest only
                         renames, changes, fixes or drops what was found.

Parameter specs use JSON Schema keywords (type, minimum, maximum, multipleOf, enum, minLength,
maxLength, pattern) so a request is validated by jsonschema, and a client can build a form from
GET /api/workflows/<name>. Besides plain values a manifest can declare reference images (a list
of images, each loaded and chained into the conditioning), a scheduler that swaps the graph's
sigma node for BasicScheduler, and where extra LoRAs are chained in. Rendering edits a copy of
the parsed graph; JSON is never assembled from strings. The directory is re-scanned on use, so
new or edited files are picked up without a restart. docs/workflows.md has the whole format.
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

from api import detect
from api import graph as g
from api import loras as lora_specs
from api.inputs import IMAGE_REF_SCHEMA

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
    """One request field and the node inputs it sets.

    kind "value" sets its targets; "images" takes a list of image references, one per target,
    or any number when `chain` names the node through which extra images are copied and
    chained; "scheduler" swaps the `swap` node for BasicScheduler when a name is given.
    """

    name: str
    schema: dict
    targets: list[tuple[str, str]]
    default: Any = None
    required: bool = False
    random: bool = False
    description: str = ""
    kind: str = "value"
    chain: tuple[str, str] | None = None
    swap: tuple[str, tuple[str, str]] | None = None
    setting: str | None = None
    source: str = "manifest"

    def describe(self) -> dict:
        out = {"name": self.name, **self.schema, "required": self.required}
        if self.random:
            out["default"] = None
            out["random_when_missing"] = True
        elif self.default is not None:
            out["default"] = self.default
        out["description"] = self.description
        out["sets"] = [f"{node}.{inp}" for node, inp in self.targets]
        if self.kind != "value":
            out["kind"] = self.kind
        if self.chain:
            out["chained_through"] = f"{self.chain[0]}.{self.chain[1]}"
        if self.swap:
            node_id, (model_node, model_input) = self.swap
            out["swaps_node"] = node_id
            out["model_from"] = f"{model_node}.{model_input}"
        if self.setting:
            out["default_from_setting"] = self.setting
        out["source"] = self.source
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
        if self.lora_anchor is not None:
            try:
                values["loras"] = lora_specs.from_request(request.get("loras") or [])
            except lora_specs.LoraSpecError as exc:
                raise RequestInvalid(str(exc), "loras", {"field": "loras"}) from None
        notes = {
            name: spec.get("reason", "not supported by this workflow")
            for name, spec in self.ignored.items()
            if name in request and request[name] not in (None, "", spec.get("neutral"))
        }
        return values, notes

    def render(self, values: dict, loras: list | tuple = ()) -> dict:
        """A new graph with every parameter and fixed value set, images and LoRAs chained.

        Image parameters must already hold LoadImage values (api/inputs.resolve).
        """
        graph = copy.deepcopy(self.graph)
        for name, param in self.params.items():
            value = values.get(name)
            if value is None or param.kind != "value":
                continue
            for node_id, input_name in param.targets:
                graph[node_id]["inputs"][input_name] = value
        for node_id, input_name, value in self.fixed:
            graph[node_id]["inputs"][input_name] = value
        for name, param in self.params.items():
            value = values.get(name)
            if param.kind == "images" and value:
                _place_images(graph, param, list(value))
        for name, param in self.params.items():
            value = values.get(name)
            if param.kind == "scheduler" and value:
                node_id, model_from = param.swap
                g.swap_scheduler(graph, node_id, model_from, value)
        if loras and self.lora_anchor is not None:
            g.insert_loras(graph, self.lora_anchor, loras)
        return graph


def _place_images(graph: dict, param: Param, images: list[str]) -> None:
    """First images into the targets; the rest into copies chained through param.chain."""
    for (node_id, input_name), image in zip(param.targets, images, strict=False):
        graph[node_id]["inputs"][input_name] = image
    extra = images[len(param.targets) :]
    if not extra or param.chain is None:
        return
    start, start_input = param.targets[-1]
    end, chain_input = param.chain
    starts = g.chain_copies(graph, start, end, chain_input, len(extra))
    for node_id, image in zip(starts, extra, strict=True):
        graph[node_id]["inputs"][start_input] = image


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
    if len(path) > 1 and error.validator != "additionalProperties":
        index = path[1]
        what = schema.get("description") or error.message
        if error.validator in ("minLength", "maxLength", "minimum", "maximum", "type"):
            what = error.message
        return RequestInvalid(f"{name}[{index}]: {what}", name, {**details, "index": index})
    if error.validator in ("minItems", "maxItems"):
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        count = len(error.instance) if isinstance(error.instance, list) else "?"
        span = f"{lo} to {hi}" if hi is not None else f"at least {lo}"
        return RequestInvalid(f"{name} takes {span} items (got {count})", name, details)
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


def check_graph(graph: Any, name: str) -> dict:
    """The graph itself when it is an API-format graph; WorkflowError saying why not."""
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


VALUE_TYPES = ("string", "integer", "number", "boolean")
RESERVED = {*REQUEST_FIELDS, "loras"}
MAX_IMAGES = 10


def _merge_detected(name: str, graph: dict, manifest: dict) -> dict:
    """The detected manifest with the hand-written one's renames, changes, fixes and drops."""
    where = f"{name}{MANIFEST_SUFFIX}"
    found = detect.detect(graph)
    params = {k: {**v, "source": "detected"} for k, v in found["parameters"].items()}
    renames = manifest.get("rename") or {}
    if not isinstance(renames, dict):
        raise WorkflowError(f"{where}: 'rename' maps detected names to new names")
    for old, new in renames.items():
        if old not in params:
            raise WorkflowError(
                f"{where}: rename {old!r}: no such detected parameter "
                f"(detected: {', '.join(params) or 'none'})"
            )
        params[new] = params.pop(old)
    for pname, spec in (manifest.get("parameters") or {}).items():
        if spec is None:
            params.pop(pname, None)
        elif not isinstance(spec, dict):
            raise WorkflowError(f"{where} parameter {pname!r} must be an object or null")
        elif pname in params:
            params[pname] = {**params[pname], **spec, "source": "detected+manifest"}
        else:
            params[pname] = {**spec, "source": "manifest"}
    fixed: dict[str, Any] = {}
    for key, value in (manifest.get("fixed") or {}).items():
        if key in params:
            fixed.update({target: value for target in params.pop(key).get("targets", [])})
        elif "." in key:
            fixed[key] = value
        else:
            raise WorkflowError(
                f"{where} fixed: {key!r} is neither a parameter nor '<node>.<input>'"
            )
    for pname in list(params):
        spec = params[pname]
        before = spec.get("targets") or []
        spec["targets"] = [t for t in before if t not in fixed]
        if before and not spec["targets"] and spec["source"] == "detected":
            del params[pname]  # every input it set is fixed now
    for pname in manifest.get("ignored") or {}:
        params.pop(pname, None)
    return {
        "description": manifest.get(
            "description", 'Detected from the graph (no manifest, or one with "detect": true).'
        ),
        "parameters": params,
        "fixed": fixed,
        "ignored": manifest.get("ignored") or {},
        "models": manifest.get("models", found["models"]),
        "loras": manifest.get("loras", True),
    }


def _param(pname: str, spec: Any, graph: dict, where: str) -> Param:
    if pname in RESERVED:
        raise WorkflowError(f"{where}: the name is reserved")
    if not isinstance(spec, dict):
        raise WorkflowError(f"{where}: must be an object")
    kind = spec.get("kind", "value")
    targets = [_parse_target(t, graph, where) for t in spec.get("targets", [])]
    chain = swap = None
    if kind == "images":
        if not targets:
            raise WorkflowError(f"{where}: an images parameter needs the LoadImage input(s)")
        if spec.get("chain") is not None:
            chain = _parse_target(spec["chain"], graph, f"{where} chain")
            if targets[-1][0] not in g.upstream(graph, chain[0]):
                raise WorkflowError(
                    f"{where}: chain node {chain[0]} does not depend on node {targets[-1][0]}"
                )
        most = MAX_IMAGES if chain else len(targets)
        maximum = spec.get("maxItems", most)
        if not isinstance(maximum, int) or not 1 <= maximum <= most:
            raise WorkflowError(f"{where}: maxItems must be 1..{most}")
        schema = {
            "type": "array",
            "minItems": spec.get("minItems", 1),
            "maxItems": maximum,
            "items": IMAGE_REF_SCHEMA,
        }
    elif kind in ("value", "scheduler"):
        if spec.get("type") not in VALUE_TYPES:
            raise WorkflowError(f"{where}: needs a type of string, integer, number or boolean")
        schema = {k: spec[k] for k in SCHEMA_KEYWORDS if k in spec}
        if kind == "scheduler":
            swap_spec = spec.get("swap") or {}
            node_id = str(swap_spec.get("node", ""))
            if node_id not in graph:
                raise WorkflowError(f"{where}: swap.node {node_id!r} is not in the graph")
            model_from = _parse_target(swap_spec.get("model_from"), graph, f"{where} swap")
            if not g.is_link(graph[model_from[0]]["inputs"][model_from[1]]):
                raise WorkflowError(f"{where}: swap.model_from must be an input holding a link")
            swap = (node_id, model_from)
    else:
        raise WorkflowError(f"{where}: unknown kind {kind!r} (value, images or scheduler)")
    default = spec.get("default")
    if default is None and targets and not spec.get("random") and kind == "value":
        node_id, input_name = targets[0]
        current = graph[node_id]["inputs"][input_name]
        default = None if isinstance(current, list) else current
    if default is not None:
        problems = list(Draft202012Validator(schema).iter_errors(default))
        if problems:
            raise WorkflowError(f"{where}: default {default!r}: {problems[0].message}")
    setting = spec.get("setting")
    if setting is not None:
        from api.config import SETTINGS  # the settings a manifest may take a default from

        if setting not in {s.env for s in SETTINGS}:
            raise WorkflowError(f"{where}: setting {setting!r} is not a sidecar setting")
    return Param(
        name=pname,
        schema=schema,
        targets=targets,
        default=default,
        required=bool(spec.get("required")),
        random=bool(spec.get("random")),
        description=spec.get("description", ""),
        kind=kind,
        chain=chain,
        swap=swap,
        setting=setting,
        source=spec.get("source", "manifest"),
    )


def _lora_anchor(declared: Any, graph: dict, where: str) -> tuple[g.Link | None, str]:
    """Where extra LoRAs go: the manifest's "loras": {"after": "<node>[:<output>]"}, false, or
    (by default) the MODEL output feeding the primary sampler or its guider."""
    if declared is False:
        return None, "the manifest turns LoRAs off for this workflow"
    if isinstance(declared, dict) and declared.get("after") is not None:
        node_id, _, index = str(declared["after"]).partition(":")
        if node_id not in graph:
            raise WorkflowError(f"{where}: loras.after names node {node_id!r}, not in the graph")
        if index and not index.isdigit():
            raise WorkflowError(f"{where}: loras.after must be '<node>' or '<node>:<output>'")
        return (node_id, int(index or 0)), ""
    if declared not in (None, True) and not isinstance(declared, dict):
        raise WorkflowError(f'{where}: \'loras\' must be false or {{"after": "<node>"}}')
    anchor = g.model_anchor(graph)
    if anchor is None or anchor[0] not in graph:
        return None, "the graph has no sampler taking a MODEL to chain LoRAs in front of"
    return anchor, ""


def build(name: str, graph: Any, manifest: Any) -> Workflow:
    """Check a graph and its manifest (None: detect everything) and build a Workflow."""
    graph = check_graph(graph, name)
    if manifest is None:
        manifest = {}
    if not isinstance(manifest, dict):
        raise WorkflowError(f"{name}{MANIFEST_SUFFIX} must be a JSON object")
    detected = bool(manifest.get("detect", "parameters" not in manifest))
    if detected:
        manifest = _merge_detected(name, graph, manifest)
    params = {
        pname: _param(pname, spec, graph, f"{name}{MANIFEST_SUFFIX} parameter {pname!r}")
        for pname, spec in (manifest.get("parameters") or {}).items()
    }
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
    anchor, lora_note = _lora_anchor(manifest.get("loras"), graph, f"{name}{MANIFEST_SUFFIX}")
    models = manifest.get("models")
    return Workflow(
        name=name,
        graph=graph,
        params=params,
        fixed=fixed,
        ignored=ignored,
        description=manifest.get("description", ""),
        models=list(detect.models(graph) if models is None else models),
        lora_anchor=anchor,
        lora_note=lora_note,
        detected=detected,
    )


def load(directory: Path, name: str) -> Workflow:
    """Load <name>.json and, when there is one, <name>.manifest.json from a directory."""
    graph_path = directory / f"{name}.json"
    manifest_path = directory / f"{name}{MANIFEST_SUFFIX}"
    try:
        graph = json.loads(graph_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{graph_path.name} is not valid JSON: {exc}") from None
    manifest = None
    if manifest_path.exists():
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
                except Exception as exc:
                    # A graph shaped in a way nobody foresaw must not take the server down.
                    invalid[name] = f"could not be read: {type(exc).__name__}: {exc}"
                    log.exception("workflow %s could not be read", name)
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
