"""Reading a workflow's files: <name>.json (the graph) and <name>.manifest.json (parameters).

A workflow is one or two files in the workflows directory:
  <name>.json            the graph, exactly as ComfyUI's "Save (API Format)" writes it
  <name>.manifest.json   optional: which request field sets which node input, with type,
                         default and range. Without it (or with "detect": true) the parameters
                         are detected from the graph (api/graphs/detect.py) and the manifest
                         only renames, changes, fixes or drops what was found.

Parameter specs use JSON Schema keywords (type, minimum, maximum, multipleOf, enum, minLength,
maxLength, pattern) so a request is validated by jsonschema. Every mistake in a manifest is a
WorkflowError naming the file, the parameter and what is wrong; docs/workflows.md has the
whole format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from api.config import SETTINGS
from api.exceptions import WorkflowError
from api.graphs import detect
from api.graphs import edit as g
from api.graphs.images import IMAGE_REF_SCHEMA
from api.graphs.params import KINDS, Param
from api.graphs.workflow import REQUEST_FIELDS, SCHEMA_KEYWORDS, Workflow

MANIFEST_SUFFIX = ".manifest.json"


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
    extra: dict[str, Any] = {}
    if kind == "images":
        if not targets:
            raise WorkflowError(f"{where}: an images parameter needs the LoadImage input(s)")
        if spec.get("chain") is not None:
            chain = _parse_target(spec["chain"], graph, f"{where} chain")
            if targets[-1][0] not in g.upstream(graph, chain[0]):
                raise WorkflowError(
                    f"{where}: chain node {chain[0]} does not depend on node {targets[-1][0]}"
                )
            extra["chain"] = chain
        most = MAX_IMAGES if "chain" in extra else len(targets)
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
            extra["swap"] = (node_id, model_from)
    else:
        raise WorkflowError(f"{where}: unknown kind {kind!r} (value, images or scheduler)")
    default = spec.get("default")
    if default is None and targets and not spec.get("random") and kind == "value":
        node_id, input_name = targets[0]
        current = graph[node_id]["inputs"][input_name]
        default = None if isinstance(current, list) else current
    required = bool(spec.get("required"))
    # A required parameter's default is never used (the request must give a value), so a
    # placeholder such as "" in the graph is not checked against the request's schema.
    if default is not None and not required:
        problems = list(Draft202012Validator(schema).iter_errors(default))
        if problems:
            raise WorkflowError(f"{where}: default {default!r}: {problems[0].message}")
    setting = spec.get("setting")
    if setting is not None and setting not in {s.env for s in SETTINGS}:
        raise WorkflowError(f"{where}: setting {setting!r} is not a sidecar setting")
    return KINDS[kind](
        name=pname,
        schema=schema,
        targets=targets,
        default=default,
        required=required,
        random=bool(spec.get("random")),
        description=spec.get("description", ""),
        setting=setting,
        source=spec.get("source", "manifest"),
        **extra,
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
