"""HTTP client for one ComfyUI server, and the shapes of its answers (QueueSnapshot, Submitted).

Its failures are the ComfyUI* classes of api/exceptions.py (unreachable, timeout, rejected, any
other error), which api/errors.py maps to 503, 504, 422 and 502.

Uses the unprefixed routes (/prompt, /queue, /history/<id>, /system_stats, ...): they exist on
every ComfyUI, while the /api/... aliases only exist on servers newer than early 2024.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from api.comfyui_http import Answer, Connections
from api.exceptions import ComfyUIServerError, ComfyUITimeout, ComfyUIUnreachable
from api.rejections import missing_nodes, rejection

if TYPE_CHECKING:
    # Imported where a call needs it (a proxy, an https URL, an upload, the unit tests' fake
    # ComfyUI): its modules cost each worker ~3.6 MB, and a ComfyUI on the same host or
    # network is called on http.client.
    import requests
    from requests.adapters import HTTPAdapter

# The key under which the sidecar's job id travels in each prompt's extra_data.
JOB_MARKER = "sidecar_job_id"

# How long the list of node classes from /object_info is trusted before it is fetched again.
NODE_CLASSES_MAX_AGE = 60.0
PLAIN_HEADERS = {"User-Agent": "comfy-sidecar"}
PLAIN_JSON_HEADERS = {**PLAIN_HEADERS, "Content-Type": "application/json"}
# Calls on http.client where they can (api/comfyui_http.py); off, every call goes through
# requests' transport adapter, where the unit tests fake ComfyUI (responses).
PLAIN_HTTP = True


@functools.cache
def _requests_headers() -> dict[str, str]:
    """What every call through requests sends: its own defaults, under the sidecar's name (built
    at the first such call, not at import: requests is loaded only where a call needs it)."""
    import requests

    return {**requests.utils.default_headers(), **PLAIN_HEADERS}


def _item_marker(item: list) -> str | None:
    """The job id the sidecar put in a queue or history item's extra_data, if any."""
    extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
    marker = extra.get(JOB_MARKER)
    return marker if isinstance(marker, str) else None


def _marked(items: Iterable[list]) -> dict[str, tuple[str, float | int | None]]:
    """job id -> (prompt_id, number) for the queue items (`/queue`'s, or a history entry's
    `prompt`) the sidecar marked with its job id."""
    found = {}
    for item in items:
        marker = _item_marker(item)
        if marker is not None:
            found[marker] = (item[1], item[0] if isinstance(item[0], int | float) else None)
    return found


@dataclass(frozen=True)
class QueueSnapshot:
    """ComfyUI's /queue at one moment: running and pending items (pending in run order).

    Each item is `[number, prompt_id, prompt, extra_data, outputs_to_execute]`.
    """

    running: tuple[list, ...] = ()
    pending: tuple[list, ...] = ()

    @classmethod
    def from_answer(cls, data: dict) -> QueueSnapshot:
        return cls(
            tuple(data.get("queue_running") or []),
            tuple(sorted(data.get("queue_pending") or [], key=lambda item: item[0])),
        )

    # Computed once per snapshot: a reconciliation asks about every unfinished job.
    @functools.cached_property
    def running_ids(self) -> frozenset[str]:
        return frozenset(item[1] for item in self.running)

    @functools.cached_property
    def pending_ids(self) -> frozenset[str]:
        return frozenset(item[1] for item in self.pending)

    def is_running(self, prompt_id: str | None) -> bool:
        return prompt_id in self.running_ids

    def is_pending(self, prompt_id: str | None) -> bool:
        return prompt_id in self.pending_ids

    def positions(self) -> dict[str, int]:
        """prompt_id -> 0 while running, 1.. its place among the pending prompts."""
        found = {item[1]: 0 for item in self.running}
        found.update({item[1]: n for n, item in enumerate(self.pending, start=1)})
        return found

    def position_of(self, prompt_id: str | None) -> int | None:
        return self.positions().get(prompt_id) if prompt_id else None

    def prompts_of_jobs(self) -> dict[str, str]:
        """job id -> prompt_id, for the items the sidecar marked with its job id."""
        return {job_id: prompt_id for job_id, (prompt_id, _) in self.marked().items()}

    def marked(self) -> dict[str, tuple[str, float | int | None]]:
        """job id -> (prompt_id, number), for the items the sidecar marked with its job id."""
        return _marked((*self.running, *self.pending))

    def as_contract(self) -> dict:
        """The primary API's `queue`: `[number, prompt_id]` pairs."""
        return {
            "queue_pending": [[item[0], item[1]] for item in self.pending],
            "queue_running": [[item[0], item[1]] for item in self.running],
        }


@dataclass
class Submitted:
    """What POST /prompt answered for an accepted graph."""

    prompt_id: str
    number: float | int | None
    node_errors: dict = field(default_factory=dict)


class ComfyUIClient:
    """One client per app, shared by every thread; every call has a (connect, read) timeout.

    The rule across threads: the client holds one requests transport adapter (a connection
    pool) per thread, created on first use; everything else it keeps (the cached /object_info)
    is guarded by a lock. So request threads, the tracker and the reconciler all use the same
    client object.
    """

    def __init__(self, base_url: str, timeout: tuple[float, float]) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # When ComfyUI last answered a call, whatever the answer (monotonic; 0: never).
        self.answered_at = 0.0
        self._local = threading.local()
        self._classes: frozenset[str] = frozenset()
        self._classes_at = 0.0
        self._classes_lock = threading.Lock()
        # One /object_info fetch at a time; whoever waited for it uses its answer.
        self._fetch_lock = threading.Lock()
        # The whole /object_info answer behind the class list, for api/graphs/catalog.py.
        self._info: dict = {}
        self._outputs_of: dict | None = None  # the _info that _output_classes was made from
        self._output_classes: frozenset[str] = frozenset()
        self.object_info_max_age = NODE_CLASSES_MAX_AGE
        # A forced refresh (max_age=0) still reuses a copy younger than this.
        self.object_info_refresh_interval = 0.0

    @property
    def adapter(self) -> HTTPAdapter:
        """This thread's transport adapter (its own connection pool)."""
        adapter = getattr(self._local, "adapter", None)
        if adapter is None:
            from requests.adapters import HTTPAdapter

            adapter = self._local.adapter = HTTPAdapter()
        return adapter

    @functools.cached_property
    def _environment(self) -> tuple[dict, bool | str]:
        """The proxy and CA settings of the environment for ComfyUI's URL, read once (a Session
        looks them up again on every call: several environment scans per request)."""
        import requests

        found = requests.Session().merge_environment_settings(self.base_url, {}, None, None, None)
        return found["proxies"], found["verify"]

    @functools.cached_property
    def _plain(self) -> Connections | None:
        """Where calls go through http.client (api/comfyui_http.py): an http:// URL that no
        proxy of the environment applies to."""
        if not PLAIN_HTTP or not self.base_url.startswith("http://"):
            return None
        # requests takes its proxies from the same place: with none set (the usual), none
        # applies, and requests need not be loaded.
        if urllib.request.getproxies():
            import requests

            if requests.utils.select_proxy(self.base_url, self._environment[0]):
                return None
        return Connections(self.base_url)

    def close(self) -> None:
        """Close this thread's connections (other threads close theirs when they end)."""
        if self._plain is not None:
            self._plain.close()
        adapter = getattr(self._local, "adapter", None)
        if adapter is not None:
            adapter.close()
            self._local.adapter = None

    def _url(self, path: str, *parts: str) -> str:
        return self.base_url + path + "".join("/" + quote(p, safe="") for p in parts)

    def _request(
        self,
        method: str,
        url: str,
        timeout: tuple[float, float] | None = None,
        body: Any = None,
        params: dict | None = None,
        files: dict | None = None,
        data: dict | None = None,
    ) -> requests.Response | Answer:
        """One call: `body` sent as JSON, `params` as the query, `files` and `data` as a
        multipart form. On http.client where it can (api/comfyui_http.py); else the request is
        built here and handed to requests' transport adapter: a Session's preparing and merging
        of settings, cookies and hooks cost more CPU than the rest of a call to ComfyUI on the
        same host (measured ~0.25 ms of ~0.75), and ComfyUI's API sets no cookies and does not
        redirect."""
        timeout = timeout or self.timeout
        target = f"{url}?{urlencode(params)}" if params else url
        content = None if body is None else json.dumps(body, allow_nan=False).encode()
        plain = self._plain
        if plain is not None and files is None:
            headers = PLAIN_HEADERS if content is None else PLAIN_JSON_HEADERS
            answer = plain.request(method, target, content, headers, timeout)
            self.answered_at = time.monotonic()
            return answer
        import requests
        from requests.structures import CaseInsensitiveDict

        sent = _requests_headers()
        if files is not None:
            request = requests.Request(method, url, sent, files=files, data=data).prepare()
        else:
            request = requests.PreparedRequest()
            request.method, request.hooks = method, {"response": []}
            request.url, request.body = target, content
            request.headers = CaseInsensitiveDict(sent)
            if content is not None:
                request.headers["Content-Type"] = "application/json"
            if method != "GET":
                request.headers["Content-Length"] = str(len(content or b""))
        proxies, verify = self._environment
        try:
            response = self.adapter.send(request, timeout=timeout, proxies=proxies, verify=verify)
            self.answered_at = time.monotonic()
            return response
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

    def _json(self, response: requests.Response | Answer) -> Any:
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
        response = self._request("POST", self._url("/prompt"), body=payload)
        if response.status_code == 400:
            try:
                data = response.json()
            except ValueError:
                data = {}
            if isinstance(data, dict) and ("error" in data or "node_errors" in data):
                error = data.get("error")
                if isinstance(error, str):
                    error = {"type": "error", "message": error}
                raise rejection(error or {}, data.get("node_errors") or {})
        data = self._json(response)
        if not isinstance(data, dict) or not data.get("prompt_id"):
            raise ComfyUIServerError("POST /prompt answered without a prompt_id", 200, str(data))
        return Submitted(data["prompt_id"], data.get("number"), data.get("node_errors") or {})

    def queue(self) -> QueueSnapshot:
        """What ComfyUI runs and holds now."""
        data = self._get("/queue")
        if not isinstance(data, dict):
            raise ComfyUIServerError("GET /queue answered something other than an object")
        return QueueSnapshot.from_answer(data)

    def history(self, prompt_id: str) -> dict | None:
        """The history entry of one prompt, or None while it is unknown, queued or running."""
        data = self._get("/history", prompt_id)
        return (data or {}).get(prompt_id)

    def recent_history(self, max_items: int) -> dict:
        """The last max_items history entries (never the whole history, which can be huge)."""
        return self._get("/history", max_items=max_items) or {}

    def recent_prompts_of_jobs(self, max_items: int) -> dict[str, tuple[str, float | int | None]]:
        """job id -> (prompt_id, number) for the marked prompts among the last max_items
        history entries (whose `prompt` is the queue item: [number, prompt_id, ...])."""
        return _marked(
            entry.get("prompt") or [] for entry in self.recent_history(max_items).values()
        )

    def interrupt(self, prompt_id: str | None = None) -> None:
        body = {"prompt_id": prompt_id} if prompt_id else {}
        response = self._request("POST", self._url("/interrupt"), body=body)
        if response.status_code >= 400:
            self._json(response)

    def free(self) -> None:
        """Ask ComfyUI to unload its models and free memory (POST /free, in every version
        the sidecar supports); ComfyUI does it between prompts, never mid-run."""
        response = self._request(
            "POST", self._url("/free"), body={"unload_models": True, "free_memory": True}
        )
        if response.status_code >= 400:
            self._json(response)

    def cancel_job(self, prompt_id: str) -> bool | None:
        """Targeted cancel (servers from mid-2026): True/False as the server says, None when
        this server has no such route and the caller must fall back to /interrupt."""
        response = self._request("POST", self._url("/api/jobs", prompt_id, "cancel"), body={})
        if response.status_code in (404, 405):
            return None
        data = self._json(response)
        return bool(isinstance(data, dict) and data.get("cancelled"))

    def delete_pending(self, prompt_ids: list[str]) -> None:
        response = self._request("POST", self._url("/queue"), body={"delete": prompt_ids})
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
        samplers, schedulers) until it expires; max_age=0 asks for a fresh one (a name was
        missing from the cached copy). The answer can be megabytes and takes ComfyUI a while
        to build, and any client can send made-up names, so a fresh copy is fetched at most
        once per object_info_refresh_interval and by one thread at a time: the others wait for
        that fetch and use its answer.
        """
        max_age = self.object_info_max_age if max_age is None else max_age
        max_age = max(max_age, self.object_info_refresh_interval)
        asked = time.monotonic()
        with self._classes_lock:
            if self._info and asked - self._classes_at < max_age:
                return self._info
        with self._fetch_lock:
            with self._classes_lock:
                if self._info and self._classes_at >= asked:
                    return self._info  # fetched while this thread waited for the lock
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

    def output_node_classes(self) -> frozenset[str] | None:
        """The node classes ComfyUI marks as output nodes, from the /object_info already
        fetched (never fetched here: the tracker asks this for every finished run); None
        before the first fetch."""
        with self._classes_lock:
            info = self._info
            if not info:
                return None
            if self._outputs_of is not info:
                self._output_classes = frozenset(
                    name
                    for name, spec in info.items()
                    if isinstance(spec, dict) and spec.get("output_node")
                )
                self._outputs_of = info
            return self._output_classes

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
            raise missing_nodes(found)

    def upload_image(
        self,
        filename: str,
        data: bytes,
        content_type: str,
        overwrite: bool = False,
        subfolder: str = "",
    ) -> dict:
        """POST /upload/image into ComfyUI's input directory (a subfolder of it, created when
        missing); returns {name, subfolder, type}.

        Without overwrite ComfyUI keeps an existing file of the same name and content, and
        renames a different one to "name (1).png"; the answer says which name it used.
        """
        form = {"type": "input", "subfolder": subfolder}
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
