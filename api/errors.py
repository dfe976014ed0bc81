"""The HTTP edge of every failure: which status each error becomes, and the one error shape.

Body: {"error": <human-readable string>, "code": <machine-readable word>, "request_id",
"timestamp"} plus optional "details" and extra fields (job_id...). Scripts written for the
primary API print `error`, so it is always a top-level string. Domain code raises the classes
of api/exceptions.py; this module alone maps them (and ComfyUI's failures) to HTTP statuses:
unreachable 503, timeout 504, graph rejected 422, anything else from ComfyUI 502.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from api import exceptions as exc
from api import redaction

log = logging.getLogger(__name__)

# Looked up along each exception's class hierarchy: the most specific class listed wins.
STATUS: dict[type[exc.SidecarError], int] = {
    exc.InvalidRequest: 400,
    exc.Unauthorized: 401,
    exc.Forbidden: 403,
    exc.RawGraphsDisabled: 403,
    exc.NotLocal: 403,
    exc.HostNotAllowed: 403,
    exc.CrossSiteRequest: 403,
    exc.WebhooksDisabled: 403,
    exc.NotFound: 404,
    exc.NoImage: 406,
    exc.AlreadyFinished: 409,
    exc.JobCancelled: 409,
    exc.NameTaken: 409,
    exc.UploadTooLarge: 413,
    exc.UnsupportedMedia: 415,
    exc.WorkflowUnusable: 422,
    exc.IdempotencyKeyReused: 422,
    exc.ComfyUIRejected: 422,
    exc.UpgradeRequired: 426,
    exc.TooManyJobs: 429,
    exc.TooManyWatchers: 429,
    exc.TooManyAuthFailures: 429,
    exc.WebSocketUnsupported: 501,
    exc.StorageError: 507,
    exc.JobFailed: 500,
    exc.JobTimedOut: 504,
    exc.ComfyUIError: 502,
    exc.ComfyUIUnreachable: 503,
    exc.Unhealthy: 503,
    exc.StoreUnavailable: 503,
    exc.ComfyUITimeout: 504,
    exc.SubmissionUnconfirmed: 504,
}
# What a client reads when ComfyUI itself failed (the technical cause goes in details).
COMFYUI_MESSAGES: dict[type[exc.ComfyUIError], str] = {
    exc.ComfyUIUnreachable: "ComfyUI not responding",
    exc.ComfyUITimeout: "ComfyUI did not answer in time",
}


def status_of(error: exc.SidecarError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def _presented(error: exc.SidecarError, operator: bool) -> tuple[str, Any, dict]:
    """(message, details, extra fields) as the client sees them. What ComfyUI says names
    files and addresses on the server: only the operator reads it as it is."""
    extra = error.extra
    if isinstance(error, exc.ComfyUIError) and not isinstance(error, exc.ComfyUIRejected):
        message = COMFYUI_MESSAGES.get(type(error), f"ComfyUI failed: {error.message}")
        if operator:
            return message, error.message, extra
        # The technical cause names ComfyUI's internal address: tenants get the sentence.
        return redaction.text(message), None, extra
    if isinstance(error, exc.ComfyUIRejected) and not operator:
        return redaction.text(error.message), redaction.scrub(error.details), redaction.scrub(extra)
    return error.message, error.details, extra


def body(message: str, code: str, details: Any = None, **extra: Any) -> dict:
    """The one error shape."""
    payload: dict[str, Any] = {"error": message, "code": code}
    if details is not None:
        payload["details"] = details
    payload.update(extra)
    payload["request_id"] = getattr(g, "request_id", None)
    payload["timestamp"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    return payload


def init_app(app: Flask) -> None:
    """Install the request id and the JSON error handlers."""

    @app.before_request
    def _request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming[:64] if incoming.isprintable() and incoming else uuid.uuid4().hex

    @app.after_request
    def _echo_request_id(response):
        response.headers["X-Request-ID"] = getattr(g, "request_id", "")
        # Runs after the rate limiter's hook, which puts its own Retry-After on every answer:
        # keep it only where it means something, and keep ours where we set one.
        if response.status_code not in (429, 503):
            response.headers.pop("Retry-After", None)
        elif getattr(g, "retry_after", None):
            response.headers["Retry-After"] = g.retry_after
        return response

    @app.errorhandler(exc.SidecarError)
    def _sidecar_error(error: exc.SidecarError):
        status = status_of(error)
        headers = {}
        if error.retry_after is not None:
            headers["Retry-After"] = g.retry_after = str(error.retry_after)
        if isinstance(error, exc.Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="comfy-sidecar"'
        caller = getattr(g, "caller", None)
        message, details, extra = _presented(error, caller is not None and caller.sees_all)
        return jsonify(body(message, error.code, details, **extra)), status, headers

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        code = (error.name or "error").lower().replace(" ", "_")
        response = jsonify(body(error.description or error.name, code))
        response.status_code = error.code or 500
        for name in ("Allow", "Retry-After"):
            if error.get_headers() and (value := dict(error.get_headers()).get(name)):
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(body("Internal server error", "internal_error")), 500
