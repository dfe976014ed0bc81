"""ComfyUI's own error reports, turned into sentences a user can act on.

POST /prompt refuses a graph with `error` and `node_errors` (one entry per bad input); a run
that fails sends an `execution_error` payload. Both name nodes by id and inputs by name: here
each becomes a sentence naming the node type, the input and, for a missing model file, the
models/ folder it belongs in.
"""

from __future__ import annotations

from api.exceptions import ComfyUIRejected
from api.graphs.edit import node_order
from api.graphs.models import folder_of


def rejection(error: dict, node_errors: dict) -> ComfyUIRejected:
    """ComfyUIRejected for a refused graph, with one readable sentence per bad input."""
    problems = describe_rejection(error, node_errors)
    missing = [p for p in problems if p["type"] == "missing_node_type"]
    sentences = [p["message"] for p in problems if p["type"] != "missing_node_type"]
    if missing:
        names = ", ".join(f"{p['class_type']} (node {p['node_id']})" for p in missing)
        sentences.insert(
            0,
            f"this ComfyUI does not have the node types {names}: it is too old for this"
            " workflow or lacks the custom nodes that provide them; update ComfyUI or"
            " install those nodes",
        )
    message = "ComfyUI rejected the workflow: " + "; ".join(sentences)
    return ComfyUIRejected(message, error, node_errors, problems)


def missing_nodes(missing: dict[str, str]) -> ComfyUIRejected:
    """Node classes the server does not have, found before submitting.

    ComfyUI itself reports only the first unknown class (and servers from early 2024 answer
    500 with a KeyError), so the sidecar checks the whole graph against /object_info.
    """
    node_errors = {
        node_id: {
            "class_type": class_type,
            "errors": [
                {
                    "type": "missing_node_type",
                    "message": f"Node type '{class_type}' is not installed on this ComfyUI",
                    "details": "",
                    "extra_info": {"class_type": class_type},
                }
            ],
        }
        for node_id, class_type in missing.items()
    }
    error = {
        "type": "missing_node_type",
        "message": "This ComfyUI lacks node types the workflow needs: update ComfyUI or "
        "install the custom nodes that provide them",
        "details": ", ".join(sorted(set(missing.values()))),
        "extra_info": {},
    }
    return rejection(error, node_errors)


def describe_rejection(error: dict, node_errors: dict) -> list[dict]:
    """Turn ComfyUI's validation error into a list of readable problems, one per bad input."""
    problems: list[dict] = []
    for node_id, node in sorted((node_errors or {}).items(), key=lambda kv: node_order(kv[0])):
        class_type = node.get("class_type", "?")
        for err in node.get("errors", []):
            extra = err.get("extra_info") or {}
            input_name = extra.get("input_name") or err.get("details") or None
            problem = {
                "node_id": node_id,
                "class_type": class_type,
                "input": input_name,
                "type": err.get("type"),
                "comfyui_message": err.get("message"),
                "comfyui_details": err.get("details"),
            }
            folder = folder_of(input_name)
            if err.get("type") == "missing_node_type":
                problem["message"] = (
                    f"node type '{class_type}' (node {node_id}) is not installed on this ComfyUI"
                    " (update ComfyUI, or install the custom node that provides it)"
                )
            elif err.get("type") == "value_not_in_list" and folder:
                received = extra.get("received_value")
                problem["missing_model"] = {"file": received, "folder": folder}
                problem["message"] = (
                    f"missing model file '{received}' for {class_type} (node {node_id}, "
                    f"input {input_name}): put it in models/{folder}/"
                )
            else:
                detail = err.get("details") or ""
                problem["message"] = (
                    f"{class_type} (node {node_id}): {err.get('message', 'invalid')}"
                    + (f": {detail}" if detail else "")
                )
            problems.append(problem)
    if not problems:
        error = error or {}
        extra = error.get("extra_info") or {}
        message = error.get("message") or "invalid workflow"
        if extra.get("class_type") and error.get("type") == "missing_node_type":
            message = (
                f"node type '{extra['class_type']}' (node {extra.get('node_id')}) is not installed "
                "on this ComfyUI: update ComfyUI or install the custom node that provides it"
            )
        elif error.get("details") and error.get("details") not in message:
            message = f"{message}: {error['details']}"
        problems.append(
            {
                "node_id": extra.get("node_id"),
                "class_type": extra.get("class_type"),
                "type": error.get("type"),
                "comfyui_message": error.get("message"),
                "comfyui_details": error.get("details"),
                "message": message,
            }
        )
    return problems


def execution_error_message(data: dict) -> str:
    """A one-line error from an `execution_error` payload: node type, node id, exception."""
    message = (data.get("exception_message") or "").strip() or "execution failed"
    node_type = data.get("node_type") or "?"
    node_id = data.get("node_id")
    exc_type = data.get("exception_type")
    prefix = f"{node_type} (node {node_id})" if node_id is not None else node_type
    if exc_type and exc_type not in ("Exception",):
        return f"{prefix} raised {exc_type}: {message}"
    return f"{prefix}: {message}"
