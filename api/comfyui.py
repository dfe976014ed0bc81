"""HTTP client for one ComfyUI server, and the small exception family its failures map to.

Uses the unprefixed routes (/prompt, /queue, /history/<id>, /system_stats, ...): they exist on
every ComfyUI, while the /api/... aliases only exist on servers newer than early 2024.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

# Loader inputs whose values are model files, and the models/ folder each one reads.
MODEL_INPUT_FOLDERS = {
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "vae_name": "vae",
    "lora_name": "loras",
    "ckpt_name": "checkpoints",
    "model_name": "upscale_models",
    "control_net_name": "controlnet",
}


# The key under which the sidecar's job id travels in each prompt's extra_data.
JOB_MARKER = "sidecar_job_id"

# How long the list of node classes from /object_info is trusted before it is fetched again.
NODE_CLASSES_MAX_AGE = 60.0


class ComfyUIError(Exception):
    """Base of every failure talking to ComfyUI."""


class ComfyUIUnreachable(ComfyUIError):
    """No TCP connection could be made (ComfyUI down, starting, or wrong host/port)."""


class ComfyUITimeout(ComfyUIError):
    """ComfyUI accepted the connection but did not answer within the read timeout."""


class ComfyUIServerError(ComfyUIError):
    """ComfyUI answered with an unexpected status or a body that is not what its protocol says."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ComfyUIRejected(ComfyUIError):
    """POST /prompt refused the graph (validation): carries ComfyUI's `error` and `node_errors`."""

    def __init__(self, error: dict, node_errors: dict) -> None:
        self.error = error
        self.node_errors = node_errors
        self.problems = describe_rejection(error, node_errors)
        missing = [p for p in self.problems if p["type"] == "missing_node_type"]
        sentences = [p["message"] for p in self.problems if p["type"] != "missing_node_type"]
        if missing:
            names = ", ".join(f"{p['class_type']} (node {p['node_id']})" for p in missing)
            sentences.insert(
                0,
                f"this ComfyUI does not have the node types {names}: it is too old for this"
                " workflow or lacks the custom nodes that provide them; update ComfyUI or"
                " install those nodes",
            )
        self.message = "ComfyUI rejected the workflow: " + "; ".join(sentences)
        super().__init__(self.message)

    @classmethod
    def missing_nodes(cls, missing: dict[str, str]) -> ComfyUIRejected:
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
        return cls(error, node_errors)


def _node_order(node_id: str) -> tuple:
    head = node_id.split(":")[0]
    return (0, int(head), node_id) if head.isdigit() else (1, 0, node_id)


def describe_rejection(error: dict, node_errors: dict) -> list[dict]:
    """Turn ComfyUI's validation error into a list of readable problems, one per bad input."""
    problems: list[dict] = []
    for node_id, node in sorted((node_errors or {}).items(), key=lambda kv: _node_order(kv[0])):
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
            folder = MODEL_INPUT_FOLDERS.get(input_name)
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


@dataclass
class Submitted:
    """What POST /prompt answered for an accepted graph."""

    prompt_id: str
    number: float | int | None
    node_errors: dict = field(default_factory=dict)


class ComfyUIClient:
    """One requests.Session per client; every call has a (connect, read) timeout."""

    def __init__(self, base_url: str, timeout: tuple[float, float]) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "comfy-sidecar"
        self._classes: frozenset[str] = frozenset()
        self._classes_at = 0.0
        self._classes_lock = threading.Lock()
        # The whole /object_info answer behind the class list, for api/catalog.py.
        self._info: dict = {}
        self.object_info_max_age = NODE_CLASSES_MAX_AGE

    def _url(self, path: str, *parts: str) -> str:
        return self.base_url + path + "".join("/" + quote(p, safe="") for p in parts)

    def _request(self, method: str, url: str, timeout: tuple[float, float] | None = None, **kw):
        try:
            return self.session.request(method, url, timeout=timeout or self.timeout, **kw)
        except requests.ConnectTimeout as exc:
            raise ComfyUIUnreachable(f"connecting to {self.base_url} timed out") from exc
        except requests.ConnectionError as exc:
            # A read timeout on a streamed body also surfaces as ConnectionError in urllib3.
            if isinstance(exc.__context__, requests.ReadTimeout):
                raise ComfyUITimeout(f"{method} {url} timed out") from exc
            raise ComfyUIUnreachable(f"cannot connect to {self.base_url}: {exc}") from exc
        except requests.Timeout as exc:
            raise ComfyUITimeout(f"{method} {url}: no answer within {self.timeout[1]}s") from exc
        except requests.RequestException as exc:
            raise ComfyUIServerError(f"{method} {url}: {exc}") from exc

    def _json(self, response: requests.Response) -> Any:
        if response.status_code >= 400:
            raise ComfyUIServerError(
                f"{response.request.method} {response.url} answered {response.status_code}",
                response.status_code,
                response.text[:2000],
            )
        try:
            return response.json()
        except ValueError as exc:
            raise ComfyUIServerError(
                f"{response.request.method} {response.url} answered non-JSON",
                response.status_code,
                response.text[:2000],
            ) from exc

    def _get(self, path: str, *parts: str, timeout=None, **params) -> Any:
        return self._json(self._request("GET", self._url(path, *parts), timeout, params=params))

    # --- work ---------------------------------------------------------------------------

    def submit(
        self,
        graph: dict,
        client_id: str,
        prompt_id: str | None = None,
        front: bool = False,
        extra_data: dict | None = None,
    ) -> Submitted:
        """Queue a graph. Never retried: a retried POST /prompt can run the work twice.

        extra_data is stored by ComfyUI with the prompt and shown in /queue and /history
        items, on every server version: the sidecar puts its job id there, so a job whose
        POST answer was lost can still be recognised.
        """
        payload: dict[str, Any] = {"prompt": graph, "client_id": client_id}
        if extra_data:
            payload["extra_data"] = extra_data
        if prompt_id:
            # Newer servers use it (so the job can be found even if the reply is lost);
            # servers before mid-2024 ignore it and choose their own, which we then use.
            payload["prompt_id"] = prompt_id
        if front:
            payload["front"] = True
        response = self._request("POST", self._url("/prompt"), json=payload)
        if response.status_code == 400:
            try:
                data = response.json()
            except ValueError:
                data = {}
            if isinstance(data, dict) and ("error" in data or "node_errors" in data):
                error = data.get("error")
                if isinstance(error, str):
                    error = {"type": "error", "message": error}
                raise ComfyUIRejected(error or {}, data.get("node_errors") or {})
        data = self._json(response)
        if not isinstance(data, dict) or not data.get("prompt_id"):
            raise ComfyUIServerError("POST /prompt answered without a prompt_id", 200, str(data))
        return Submitted(data["prompt_id"], data.get("number"), data.get("node_errors") or {})

    def queue(self) -> dict:
        """Running and pending items, each `[number, prompt_id, prompt, extra_data, outputs]`."""
        data = self._get("/queue")
        return {
            "queue_running": list(data.get("queue_running") or []),
            "queue_pending": sorted(data.get("queue_pending") or [], key=lambda item: item[0]),
        }

    def history(self, prompt_id: str) -> dict | None:
        """The history entry of one prompt, or None while it is unknown, queued or running."""
        data = self._get("/history", prompt_id)
        return (data or {}).get(prompt_id)

    def recent_history(self, max_items: int) -> dict:
        """The last max_items history entries (never the whole history, which can be huge)."""
        return self._get("/history", max_items=max_items) or {}

    def interrupt(self, prompt_id: str | None = None) -> None:
        body = {"prompt_id": prompt_id} if prompt_id else {}
        response = self._request("POST", self._url("/interrupt"), json=body)
        if response.status_code >= 400:
            self._json(response)

    def cancel_job(self, prompt_id: str) -> bool | None:
        """Targeted cancel (servers from mid-2026): True/False as the server says, None when
        this server has no such route and the caller must fall back to /interrupt."""
        response = self._request("POST", self._url("/api/jobs", prompt_id, "cancel"), json={})
        if response.status_code in (404, 405):
            return None
        data = self._json(response)
        return bool(isinstance(data, dict) and data.get("cancelled"))

    def delete_pending(self, prompt_ids: list[str]) -> None:
        response = self._request("POST", self._url("/queue"), json={"delete": prompt_ids})
        if response.status_code >= 400:
            self._json(response)

    # --- information ----------------------------------------------------------------------

    def system_stats(self, timeout: tuple[float, float] | None = None) -> dict:
        return self._get("/system_stats", timeout=timeout)

    def object_info(self, node_class: str | None = None) -> dict:
        if node_class:
            return self._get("/object_info", node_class)
        return self._get("/object_info")

    def cached_object_info(self, max_age: float | None = None) -> dict:
        """The whole /object_info answer, fetched again once it is older than max_age seconds.

        One fetch serves the node-class check and every catalog look-up (model files, LoRAs,
        samplers, schedulers) until it expires; max_age=0 forces a fresh one.
        """
        max_age = self.object_info_max_age if max_age is None else max_age
        with self._classes_lock:
            if self._info and time.monotonic() - self._classes_at < max_age:
                return self._info
        # /object_info can be several MB on servers with many custom nodes: allow it time.
        info = self._get("/object_info", timeout=(self.timeout[0], max(self.timeout[1], 60)))
        if not isinstance(info, dict):
            raise ComfyUIServerError("GET /object_info answered something other than an object")
        with self._classes_lock:
            self._info = info
            self._classes = frozenset(info)
            self._classes_at = time.monotonic()
            return self._info

    def node_classes(self, max_age: float | None = None) -> frozenset[str]:
        """Names of the node classes the server has (from /object_info), cached for max_age."""
        self.cached_object_info(max_age)
        with self._classes_lock:
            return self._classes

    def check_node_classes(self, graph: dict) -> None:
        """Raise ComfyUIRejected naming every node of the graph whose class the server lacks."""

        def missing(classes: frozenset[str]) -> dict[str, str]:
            return {
                node_id: node.get("class_type")
                for node_id, node in graph.items()
                if node.get("class_type") not in classes
            }

        found = missing(self.node_classes())
        if found:
            found = missing(self.node_classes(max_age=0))  # a custom node may have just appeared
        if found:
            raise ComfyUIRejected.missing_nodes(found)

    def upload_image(
        self, filename: str, data: bytes, content_type: str, overwrite: bool = False
    ) -> dict:
        """POST /upload/image into ComfyUI's input directory; returns {name, subfolder, type}.

        Without overwrite ComfyUI keeps an existing file of the same name and content, and
        renames a different one to "name (1).png"; the answer says which name it used.
        """
        form = {"type": "input", "subfolder": ""}
        if overwrite:
            form["overwrite"] = "true"
        response = self._request(
            "POST",
            self._url("/upload/image"),
            files={"image": (filename, data, content_type)},
            data=form,
        )
        answer = self._json(response)
        if not isinstance(answer, dict) or not answer.get("name"):
            raise ComfyUIServerError("POST /upload/image answered without a name", 200, str(answer))
        return answer

    def ws_url(self, client_id: str) -> str:
        return self.base_url.replace("http", "ws", 1) + "/ws?clientId=" + quote(client_id)

    @staticmethod
    def new_prompt_id() -> str:
        return str(uuid.uuid4())


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


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=False)
