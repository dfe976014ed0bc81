"""Every error the sidecar's domain raises, in one flat module.

Domain code (the store, the tracker, the graph work, submission, cancellation) raises these and
knows nothing of HTTP. Each carries a human-readable `message`, a machine-readable `code` (the
word clients switch on) and optional `details`; api/errors.py alone decides which HTTP status
each class becomes and renders the one error shape.
"""

from __future__ import annotations

from typing import Any


class SidecarError(Exception):
    """Base of the errors a client is told about: message, code, details, extra fields."""

    code = "error"

    def __init__(
        self,
        message: str,
        details: Any = None,
        *,
        code: str | None = None,
        retry_after: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code
        self.retry_after = retry_after  # seconds a client should wait before trying again
        self.extra = extra  # fields shown beside "error" in the body (job_id, ...)


# --- the request is wrong ------------------------------------------------------------------


class InvalidRequest(SidecarError):
    """A request the sidecar cannot act on: a bad field, body, parameter or name."""

    code = "invalid_request"

    def __init__(self, message: str, details: Any = None, **kw: Any) -> None:
        super().__init__(message, details, **kw)

    @property
    def field(self) -> str | None:
        return self.details.get("field") if isinstance(self.details, dict) else None


class InvalidGraph(InvalidRequest):
    """A client's graph that is not an API-format ComfyUI graph."""

    code = "invalid_graph"


class InvalidImage(InvalidRequest):
    """An image reference that names nothing usable (no such job, file, or index)."""

    code = "invalid_image"


class UnsafePath(InvalidRequest):
    """A name that tries to leave its directory (traversal, absolute path, NUL, separators)."""

    code = "invalid_path"


class InvalidFilename(InvalidRequest):
    """A name to save a result under that is not a plain, safe file name."""

    code = "invalid_filename"


class WebhookUrlRefused(InvalidRequest):
    """A webhook_url that is not http(s), or names a non-public address not allowed by
    WEBHOOK_ALLOWED_HOSTS."""

    code = "webhook_url_refused"


class InvalidBatch(InvalidRequest):
    """One item of a batch cannot be queued; `details` names its index (nothing was queued)."""

    code = "invalid_batch"


class UnknownWorkflow(InvalidRequest):
    """A request names a workflow the library does not have."""

    code = "unknown_workflow"


class UnknownChoice(InvalidRequest):
    """A sampler, scheduler, model file or LoRA that this ComfyUI does not have.

    The code says which kind: unknown_sampler, unknown_scheduler, unknown_lora, unknown_model
    or unknown_choice.
    """

    code = "unknown_choice"


class LoraSpecError(InvalidRequest):
    """A LoRA entry that does not follow name[:strength_model[:strength_clip]]."""


class EmptyUpload(InvalidRequest):
    """An upload without content."""


class UploadTooLarge(SidecarError):
    """An upload over MAX_UPLOAD_MB."""

    code = "upload_too_large"


class UnsupportedMedia(SidecarError):
    """A body of a type the endpoint does not take: an upload that is not a PNG, JPEG or WebP
    image (judged by its content), or a form where JSON is expected."""

    code = "unsupported_media_type"


# --- the request is understood, but cannot be done --------------------------------------


class NotFound(SidecarError):
    """No such job, image or workflow (or one the caller may not see)."""

    code = "not_found"

    def __init__(self, message: str = "Job not found", details: Any = None, **kw: Any) -> None:
        super().__init__(message, details, **kw)


class WorkflowUnusable(SidecarError):
    """A workflow that exists in the library but whose files cannot be used."""

    code = "workflow_invalid"


class AlreadyFinished(SidecarError):
    """Cancelling a job that is already completed, failed or cancelled."""

    code = "already_finished"


class JobCancelled(SidecarError):
    """A job the caller waited for (a submission with ?wait=) was cancelled."""

    code = "job_cancelled"


class JobFailed(SidecarError):
    """A job the caller waited for (a submission with ?wait=) failed: ComfyUI's error, as
    the job's status shows it."""

    code = "job_failed"


class JobTimedOut(JobFailed):
    """A job the caller waited for reached its deadline (timeout_minutes) and was stopped."""

    code = "job_timed_out"


class NoImage(SidecarError):
    """A job the caller waited for asking for its image (?wait= with Accept: image/...)
    completed without one."""

    code = "no_image"


class NameTaken(SidecarError):
    """Saving under a name that already exists (and renaming was not asked for)."""

    code = "name_taken"


class StorageError(SidecarError):
    """The output folder refused a write (a failure of the server's storage, not the request)."""

    code = "storage_error"


class OutputNotWritable(StorageError):
    """The sidecar's user may not write to the output folder (ownership, read-only mount)."""

    code = "output_not_writable"


class StorageFull(StorageError):
    """The output folder's disk is full."""

    code = "storage_full"


class IdempotencyKeyReused(SidecarError):
    """An Idempotency-Key sent again with a different request."""

    code = "idempotency_key_reused"


class DuplicateIdempotencyKey(Exception):
    """The store already holds a job with this Idempotency-Key (a concurrent twin won)."""


class TooManyJobs(SidecarError):
    """MAX_UNFINISHED_JOBS reached: the client should come back later."""

    code = "too_many_jobs"


class TooManyWatchers(SidecarError):
    """The per-worker cap on event streams, long polls and progress sockets is reached (for
    the worker, or for the API key)."""

    code = "too_many_watchers"


class TooManyAuthFailures(SidecarError):
    """Too many wrong API keys from one client address: it must wait before trying again."""

    code = "too_many_auth_failures"


class RawGraphsDisabled(SidecarError):
    """POST /api/workflows/execute while RAW_GRAPHS_ENABLED is off."""

    code = "raw_graphs_disabled"


class WebhooksDisabled(SidecarError):
    """A request names a webhook_url while the server has no WEBHOOK_SECRET to sign with."""

    code = "webhooks_disabled"


class Unauthorized(SidecarError):
    """No API key, or one the server does not know."""

    code = "unauthorized"


class Forbidden(SidecarError):
    """A known API key whose scope does not cover the endpoint."""

    code = "forbidden"


class NotLocal(SidecarError):
    """Without API keys only this machine may call the API, and this caller is elsewhere."""

    code = "not_local"


class HostNotAllowed(SidecarError):
    """A Host header the API does not answer to (DNS rebinding, or a name not configured)."""

    code = "host_not_allowed"


class CrossSiteRequest(SidecarError):
    """A state-changing request (or a WebSocket) sent by a web page of another origin."""

    code = "cross_site_request"


class UpgradeRequired(SidecarError):
    """A plain HTTP request for a WebSocket URL."""

    code = "upgrade_required"


class WebSocketUnsupported(SidecarError):
    """The server running the app cannot hand a connection over to a WebSocket."""

    code = "websocket_unsupported"


class Unhealthy(SidecarError):
    """The readiness probe's answer while ComfyUI does not respond."""

    code = "unhealthy"


class StoreUnavailable(SidecarError):
    """The job store (a cluster's PostgreSQL) is not answering."""

    code = "store_unavailable"


class SubmissionUnconfirmed(SidecarError):
    """ComfyUI took the submission but did not confirm it in time; the job may still run."""

    code = "comfyui_timeout"


# --- ComfyUI ------------------------------------------------------------------------------


class ComfyUIError(SidecarError):
    """Base of every failure talking to ComfyUI."""

    code = "comfyui_error"


class ComfyUIUnreachable(ComfyUIError):
    """No TCP connection could be made (ComfyUI down, starting, or wrong host/port)."""

    code = "comfyui_unreachable"


class ComfyUITimeout(ComfyUIError):
    """ComfyUI accepted the connection but did not answer within the read timeout."""

    code = "comfyui_timeout"


class ComfyUIServerError(ComfyUIError):
    """ComfyUI answered with an unexpected status or a body that is not what its protocol says."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ComfyUIRejected(ComfyUIError):
    """ComfyUI refused the graph (validation): its `error`, `node_errors`, and one readable
    problem per bad input (built by api.rejections.rejection)."""

    code = "comfyui_rejected"

    def __init__(self, message: str, error: dict, node_errors: dict, problems: list) -> None:
        super().__init__(message, problems, comfyui_error=error, node_errors=node_errors)
        self.error = error
        self.node_errors = node_errors
        self.problems = problems


# --- not for clients: configuration and files the operator provides ----------------------


class ConfigError(ValueError):
    """An environment variable has a value the sidecar cannot use."""


class WorkflowError(ValueError):
    """A workflow file or manifest that cannot be used; the message says why."""
