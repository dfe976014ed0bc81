"""A job: one prompt turned into one ComfyUI run, and the shapes the API shows it in.

Every fact about a job (parameters, seed, the exact graph sent, ComfyUI's prompt_id, status,
progress, every output image, error, timestamps) lives in one store row; a `Job` is that row,
typed. The shapes built here are the contract: `to_status()` is GET /api/status/<job_id> (the
primary API's fields first, scripts depend on them), `to_summary()` a listing entry,
`to_queue_entry()` an entry of GET /api/queue's `jobs`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from api import redaction
from api.schemas import (
    ANY,
    BOOLEAN,
    INTEGER,
    NUMBER,
    OBJECT,
    STRING,
    TIMESTAMP,
    array,
    nullable,
    obj,
)


class JobStatus(StrEnum):
    """Status words of the primary API, exactly."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED = (JobStatus.QUEUED, JobStatus.PROCESSING)
FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)

# The fields of GET /api/status/<job_id> that the primary API defined (scripts rely on them).
CONTRACT_FIELDS = (
    "job_id",
    "status",
    "prompt",
    "progress",
    "current_step",
    "total_steps",
    "output_image",
    "error",
    "created_at",
)
SUMMARY_FIELDS = (
    "job_id",
    "status",
    "prompt",
    "progress",
    "output_image",
    "error",
    "created_at",
    "finished_at",
    "prompt_id",
    "workflow",
    "image_url",
    "owner",
)
# Options a raw-graph job (POST /api/workflows/execute) shows back in its status.
ECHOED_OPTIONS = ("priority", "metadata", "timeout_minutes")
# ComfyUI's error payload keeps tensor dumps and tracebacks; the status shows the readable part.
BRIEF_ERROR_KEYS = ("node_id", "node_type", "exception_type", "exception_message", "executed")

ImageUrl = Callable[[dict], str]
ObjectUrl = Callable[[str], str]


def iso(timestamp: float | None) -> str | None:
    """A stored Unix time as ISO 8601 UTC with milliseconds (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def image_name(image: dict) -> str:
    """How a job's image is named in the API: "subfolder/filename", or "filename" at the root."""
    subfolder = (image.get("subfolder") or "").strip("/")
    return f"{subfolder}/{image['filename']}" if subfolder else image["filename"]


def output_files(images: list[dict]) -> list[str]:
    """The names (as image_name gives them) of the images saved in the output folder."""
    return [image_name(image) for image in images if image.get("type", "output") == "output"]


def image_path(image: dict) -> str:
    """The API path of an output image, as the images route's url_for builds it (for the
    outbox, which runs outside any request)."""
    return "/api/image/" + quote(image_name(image), safe="/")


@dataclass
class Job:
    """One job as stored. Build new ones with Job.new(); stores return them with from_row()."""

    id: str
    client_id: str
    workflow: str
    prompt: str
    graph: dict
    params: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)  # request fields the workflow could not honour
    options: dict = field(default_factory=dict)  # save_to_disk, include_base64, metadata...
    prompt_id: str | None = None
    status: JobStatus = JobStatus.QUEUED
    progress: float = 0.0
    current_step: int | None = None
    total_steps: int | None = None
    current_node: str | None = None
    outputs: list[dict] = field(default_factory=list)  # every image of every output node
    error: str | None = None
    error_details: dict | None = None  # ComfyUI's own error payload
    queue_position: int | None = None  # 0 running in ComfyUI, 1.. its place among pending
    queue_number: float | None = None  # ComfyUI's number for the prompt: lower runs first
    deadline: float | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    attempts: int = 1
    owner: str | None = None  # the name of the API key that created it (None without keys)
    node: str | None = None  # in a cluster: the node that holds it
    cancel_requested: bool = False  # in a cluster: asked to stop, its node has not yet
    pinned_node: str | None = None  # in a cluster: the one node that may run it (its inputs)
    # Output images uploaded to object storage: {"index", "key"} per image, in upload order.
    objects: list[dict] = field(default_factory=list)
    created_at: float = 0.0
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0

    @classmethod
    def new(cls, **values: Any) -> Job:
        """A queued job created now; every field not given takes its default."""
        now = time.time()
        values.setdefault("created_at", now)
        values.setdefault("updated_at", now)
        return cls(**values)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        """A job from a store row whose JSON columns are already decoded."""
        values = {name: row[name] for name in FIELD_NAMES if name in row}
        values["status"] = JobStatus(values["status"])
        for name in ("params", "notes", "options"):
            values[name] = values.get(name) or {}
        values["outputs"] = values.get("outputs") or []
        values["objects"] = values.get("objects") or []
        return cls(**values)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def submitted(self) -> bool:
        """ComfyUI confirmed the submission (its POST /prompt answer arrived)."""
        return self.submitted_at is not None

    @property
    def seed(self) -> Any:
        return self.params.get("seed")

    def settled(self, uploads: bool) -> bool:
        """Final, with every follow-up that writes to the row done (the save_to_disk copy;
        with `uploads`, the upload of each output image): its status never changes again."""
        if not self.finished:
            return False
        saving = self.options.get("save_to_disk") and self.outputs
        if saving and not {"saved_as", "save_error"} & self.options.keys():
            return False
        if uploads and self.status == JobStatus.COMPLETED:
            owed = sum(1 for image in self.outputs if image.get("type") == "output")
            return len(self.objects) >= owed
        return True

    def status_etag(self, server_paths: bool) -> str:
        """The validator of GET /api/status as one kind of caller reads it: every change to
        the row moves updated_at, and the operator's view differs from a tenant's."""
        return f"{self.updated_at!r}-{'o' if server_paths else 't'}"

    def object_keys(self) -> list[str]:
        """The object keys of the uploaded images, in the order of `outputs`."""
        by_index = {entry["index"]: entry["key"] for entry in self.objects}
        return [by_index[i] for i in sorted(by_index)]

    def to_status(
        self,
        image_url: ImageUrl,
        object_url: ObjectUrl | None = None,
        server_paths: bool = True,
    ) -> dict:
        """GET /api/status/<job_id>: the primary API's fields, then the extras.

        `image_url(image)` builds the URL of one output image; `object_url(key)` the URL of
        an image uploaded to object storage (output_urls), when uploads are on. Without
        `server_paths` (a tenant, not the operator) ComfyUI's error text loses the server's
        paths and URLs.
        """
        images = [
            {**image, "name": image_name(image), "url": image_url(image)} for image in self.outputs
        ]
        saved = [image for image in images if image["type"] == "output"] or images
        first = saved[0] if saved else None
        shown = {
            "job_id": self.id,
            "status": self.status.value,
            "prompt": self.prompt,
            "progress": round(self.progress, 4),
            # Scripts print current_step/total_steps while waiting: never None/None.
            "current_step": self.current_step if self.current_step is not None else 0,
            "total_steps": self.total_steps,
            "output_image": first["name"] if first else None,
            "error": self.error if server_paths else _scrubbed(self.error),
            "created_at": iso(self.created_at),
            "prompt_id": self.prompt_id,
            "workflow": self.workflow,
            "seed": self.seed,
            "parameters": self.params,
            "ignored_fields": self.notes,
            "current_node": self.current_node,
            "image_url": first["url"] if first else None,
            "images": images,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "error_details": (
                self.brief_error() if server_paths else _scrubbed(self.brief_error())
            ),
            "options": self.options,
            "queue_position": self.queue_position,
            "version": self.updated_at,
            "deadline": iso(self.deadline),
            "attempts": self.attempts,
            "owner": self.owner,
            "output_urls": [object_url(key) for key in self.object_keys()] if object_url else [],
        }
        for key in ECHOED_OPTIONS:
            if key in self.options:
                shown[key] = self.options[key]
        if self.node is not None:
            shown["node"] = self.node  # in a cluster: the node that holds it
        return shown

    def to_summary(self, image_url: ImageUrl, server_paths: bool = True) -> dict:
        """A job in listings: the status fields without parameters and image details."""
        full = self.to_status(image_url, server_paths=server_paths)
        return {key: full[key] for key in SUMMARY_FIELDS}

    def to_queue_entry(self, position: int | None) -> dict:
        """A job in GET /api/queue's `jobs`, with its place in ComfyUI's queue now."""
        return {
            "job_id": self.id,
            "status": self.status.value,
            "prompt": self.prompt,
            "progress": round(self.progress, 4),
            "prompt_id": self.prompt_id,
            "queue_position": position,
            "workflow": self.workflow,
        }

    def to_history_entry(self, image_url: ImageUrl, server_paths: bool = True) -> dict:
        """A finished job in ComfyUI's /history shape (GET /api/history), plus the job's own."""
        by_node: dict[str, dict] = {}
        for image in self.outputs:
            entry = {key: image[key] for key in ("filename", "subfolder", "type")}
            by_node.setdefault(image["node_id"], {"images": []})["images"].append(entry)
        completed = self.status == JobStatus.COMPLETED
        return {
            "prompt": self.prompt,
            "outputs": by_node,
            "status": {
                "status_str": "success" if completed else "error",
                "completed": completed,
                "messages": [],
            },
            "job_id": self.id,
            "job_status": self.status.value,
            "workflow": self.workflow,
            "error": self.error if server_paths else _scrubbed(self.error),
            "created_at": iso(self.created_at),
            "finished_at": iso(self.finished_at),
            "images": [image_url(image) for image in self.outputs],
        }

    def brief_error(self) -> dict | None:
        """ComfyUI's error payload without the bulky parts (tensor dumps, tracebacks)."""
        if not self.error_details:
            return None
        kept = {
            key: self.error_details[key] for key in BRIEF_ERROR_KEYS if key in self.error_details
        }
        return kept or None


FIELD_NAMES = tuple(Job.__dataclass_fields__)


def _scrubbed(value: Any) -> Any:
    return None if value is None else redaction.scrub(value)


# --- the shapes above as JSON Schema (the OpenAPI document's components) ----------------------

STATUS_WORD = {"enum": [status.value for status in JobStatus]}
IMAGE_SCHEMA = obj(
    {
        "filename": STRING,
        "subfolder": STRING,
        "type": STRING,
        "node_id": STRING,
        "name": STRING,
        "url": STRING,
        "base64": STRING,
        "media_type": STRING,
        "base64_omitted": STRING,
    },
    optional=("base64", "media_type", "base64_omitted"),
)
STATUS_SCHEMA = obj(
    {
        "job_id": STRING,
        "status": STATUS_WORD,
        "prompt": STRING,
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "current_step": INTEGER,
        "total_steps": nullable(INTEGER),
        "output_image": nullable(STRING),
        "error": nullable(STRING),
        "created_at": TIMESTAMP,
        "prompt_id": nullable(STRING),
        "workflow": STRING,
        "seed": ANY,
        "parameters": OBJECT,
        "ignored_fields": OBJECT,
        "current_node": nullable(STRING),
        "image_url": nullable(STRING),
        "images": array(IMAGE_SCHEMA),
        "started_at": nullable(TIMESTAMP),
        "finished_at": nullable(TIMESTAMP),
        "error_details": nullable(OBJECT),
        "options": OBJECT,
        "queue_position": nullable(INTEGER),
        "version": NUMBER,
        "deadline": nullable(TIMESTAMP),
        "attempts": INTEGER,
        "owner": nullable(STRING),
        "output_urls": {
            **array(STRING),
            "description": "With S3_BUCKET set: each uploaded image's URL (presigned for "
            "S3_URL_TTL seconds, or under S3_PUBLIC_BASE_URL), in image order; filled in "
            "shortly after completion, before the job.completed webhook.",
        },
        "priority": {"enum": ["normal", "high"]},
        "metadata": OBJECT,
        "timeout_minutes": NUMBER,
        "node": STRING,
        "waiting_reason": STRING,
    },
    optional=(*ECHOED_OPTIONS, "node", "waiting_reason"),
    description="A job: the primary API's fields (job_id ... created_at), then the extras. "
    "`version` changes whenever the job does (long polls take it as ?since=).",
)
SUMMARY_SCHEMA = obj({key: STATUS_SCHEMA["properties"][key] for key in SUMMARY_FIELDS})
QUEUE_ENTRY_SCHEMA = obj(
    {
        "job_id": STRING,
        "status": STATUS_WORD,
        "prompt": STRING,
        "progress": NUMBER,
        "prompt_id": nullable(STRING),
        "queue_position": nullable(INTEGER),
        "workflow": STRING,
    }
)
HISTORY_ENTRY_SCHEMA = obj(
    {
        "prompt": STRING,
        "outputs": {"type": "object", "additionalProperties": obj({"images": array(OBJECT)})},
        "status": obj({"status_str": STRING, "completed": BOOLEAN, "messages": array(ANY)}),
        "job_id": STRING,
        "job_status": STATUS_WORD,
        "workflow": STRING,
        "error": nullable(STRING),
        "created_at": TIMESTAMP,
        "finished_at": nullable(TIMESTAMP),
        "images": array(STRING),
    }
)
