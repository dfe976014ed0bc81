"""Checking a graph against ComfyUI's node schemas (what GET /object_info returns).

The same check runs in the unit tests, against a recorded /object_info of ComfyUI 0.33.0 whose
model-file lists were emptied (so file names cannot be checked there), and at startup against
the live server, where a file missing from a loader's list is a model file to download.

What is checked, per node: the class exists; every required input is given; a literal value has
the input's type (INT, FLOAT, STRING, BOOLEAN) and is within min/max, or is one of a combo's
choices; a link points at an existing node and one of its outputs, of the input's type; and the
graph has at least one output node. Inputs the schema does not know are reported as warnings
(ComfyUI ignores them, but in a template they are usually a typo).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from api.graphs import edit as g
from api.graphs.models import folder_of

PRIMITIVES = ("INT", "FLOAT", "STRING", "BOOLEAN")


@dataclass
class Problem:
    """One thing wrong with a graph; `blocking` is False for warnings."""

    kind: str
    message: str
    node_id: str | None = None
    class_type: str | None = None
    input: str | None = None
    blocking: bool = True
    missing_model: dict | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def combo_options(spec: list) -> list | None:
    """The choices of a combo input spec (V1 `[[...], {...}]`, V3 `["COMBO", {"options"}]`)."""
    if not spec:
        return None
    head = spec[0]
    if isinstance(head, list):
        return head
    if head == "COMBO":
        options = (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}).get("options")
        return list(options) if isinstance(options, list) else []
    return None


def input_specs(info: dict) -> tuple[dict, dict]:
    """(required, optional) input specs of one node class."""
    inputs = info.get("input") or {}
    return dict(inputs.get("required") or {}), dict(inputs.get("optional") or {})


def _type_name(spec: list) -> str:
    options = combo_options(spec)
    if options is not None:
        return "COMBO"
    return str(spec[0]) if spec else "*"


def _types_match(output_type: str, spec: list) -> bool:
    wanted = _type_name(spec)
    if "*" in (output_type, wanted):
        return True
    if wanted == "COMBO":
        return output_type in ("COMBO", "STRING") or isinstance(output_type, list)
    accepted = {t.strip() for t in wanted.split(",")}
    given = {t.strip() for t in str(output_type).split(",")}
    return bool(accepted & given)


def _check_value(
    node_id: str, class_type: str, name: str, value, spec: list, files_known: bool
) -> Problem | None:
    def problem(kind: str, message: str, **extra) -> Problem:
        return Problem(kind, message, node_id, class_type, name, **extra)

    where = f"{class_type} (node {node_id}) input {name}"
    options = combo_options(spec)
    if options is not None:
        if not options and not files_known:
            return None  # a file list emptied in a recorded schema: nothing to compare with
        if value in options:
            return None
        folder = folder_of(name)
        if folder and isinstance(value, str):
            return problem(
                "missing_model",
                f"missing model file '{value}' for {class_type} (node {node_id}, input {name}):"
                f" put it in models/{folder}/",
                missing_model={"file": value, "folder": folder},
            )
        shown = ", ".join(map(str, options[:20])) + (" ..." if len(options) > 20 else "")
        return problem("not_in_list", f"{where}: {value!r} is not one of: {shown}")
    kind = _type_name(spec)
    limits = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if kind not in PRIMITIVES:
        return problem("needs_link", f"{where} takes a {kind} link, not the value {value!r}")
    if kind == "BOOLEAN":
        ok = isinstance(value, bool)
    elif kind == "INT":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "FLOAT":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        return problem("bad_type", f"{where} must be {kind}, got {value!r}")
    if kind in ("INT", "FLOAT"):
        if "min" in limits and value < limits["min"]:
            return problem("out_of_range", f"{where} is {value}, below the minimum {limits['min']}")
        if "max" in limits and value > limits["max"]:
            return problem("out_of_range", f"{where} is {value}, above the maximum {limits['max']}")
        step = limits.get("step")
        if kind == "INT" and isinstance(step, int) and step > 1 and value % step:
            return problem("step", f"{where} is {value}, not a multiple of {step}", blocking=False)
    return None


def check_graph(
    graph: dict,
    object_info: dict,
    *,
    files_known: bool = True,
    skip: Iterable[tuple[str, str]] = (),
) -> list[Problem]:
    """Every problem of `graph` against `object_info`, in node order.

    files_known=False treats empty combo lists as unknown (a recorded schema without the
    installation's files). `skip` lists (node_id, input) pairs whose value is set per request.
    """
    skipped = set(skip)
    problems: list[Problem] = []
    missing = {}
    has_output = False
    for node_id in g.ordered(graph):
        node = graph[node_id]
        class_type = node.get("class_type")
        info = object_info.get(class_type)
        if not isinstance(info, dict) or not info:
            missing[node_id] = class_type
            continue
        has_output = has_output or bool(info.get("output_node"))
        required, optional = input_specs(info)
        hidden = set((info.get("input") or {}).get("hidden") or {})
        inputs = node.get("inputs", {})
        for name in required:
            if name not in inputs:
                problems.append(
                    Problem(
                        "missing_input",
                        f"{class_type} (node {node_id}) needs input {name}",
                        node_id,
                        class_type,
                        name,
                    )
                )
        for name, value in inputs.items():
            spec = required.get(name, optional.get(name))
            if spec is None:
                if name not in hidden:
                    problems.append(
                        Problem(
                            "unknown_input",
                            f"{class_type} (node {node_id}) has no input {name}",
                            node_id,
                            class_type,
                            name,
                            blocking=False,
                        )
                    )
                continue
            spec = list(spec) if isinstance(spec, list | tuple) else [spec]
            link = g.link_of(value)
            if link is not None:
                problems += _check_link(graph, object_info, node_id, class_type, name, link, spec)
            elif (node_id, name) not in skipped:
                found = _check_value(node_id, class_type, name, value, spec, files_known)
                if found:
                    problems.append(found)
    if missing:
        names = ", ".join(f"{c} (node {n})" for n, c in missing.items())
        head = [
            Problem(
                "missing_node_type",
                f"this ComfyUI does not have the node types {names}: it is too old for this"
                " workflow or lacks the custom nodes that provide them",
            )
        ]
        head += [
            Problem("missing_node_type", f"node type '{c}' (node {n}) is not installed", n, c)
            for n, c in missing.items()
        ]
        problems = head + problems
    elif not has_output:
        problems.append(
            Problem("no_output", "the graph has no output node (SaveImage, PreviewImage...)")
        )
    return problems


def _check_link(graph, object_info, node_id, class_type, name, link, spec) -> list[Problem]:
    source, index = link
    where = f"{class_type} (node {node_id}) input {name}"
    if source not in graph:
        message = f"{where} links to node {source}, which does not exist"
        return [Problem("bad_link", message, node_id, class_type, name)]
    source_info = object_info.get(graph[source].get("class_type"))
    if not isinstance(source_info, dict) or not source_info:
        return []  # reported as a missing node type
    outputs = source_info.get("output") or []
    if not 0 <= index < len(outputs):
        return [
            Problem(
                "bad_link",
                f"{where} links to output {index} of {graph[source]['class_type']} (node "
                f"{source}), which has {len(outputs)} outputs",
                node_id,
                class_type,
                name,
            )
        ]
    output_type = outputs[index]
    if not _types_match(output_type, spec):
        return [
            Problem(
                "link_type",
                f"{where} wants {_type_name(spec)} but node {source} "
                f"({graph[source]['class_type']}) output {index} is {output_type}",
                node_id,
                class_type,
                name,
            )
        ]
    return []


def blocking(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.blocking]


def summary(problems: list[Problem]) -> str:
    """One line: the node types a server lacks, then each other blocking problem."""
    shown = [p for p in blocking(problems) if not (p.kind == "missing_node_type" and p.node_id)]
    return "; ".join(p.message for p in shown)
