"""One error shape for every failure the API reports.

Body: {"error": <human-readable string>, "code": <machine-readable word>, "request_id", "timestamp"}
plus optional "details". Scripts written for the primary API print `error`, so it is always a
top-level string. ComfyUI failures are mapped to HTTP here and nowhere else.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from api import comfyui

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the API answers with: HTTP status, message, machine code and optional details."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str = "error",
        details: Any = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.details = details
        self.headers = headers or {}
        self.extra = extra


def not_found(message: str = "Job not found") -> ApiError:
    return ApiError(404, message, "not_found")


def bad_request(message: str, details: Any = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code, details)


def from_comfyui(exc: comfyui.ComfyUIError) -> ApiError:
    """Map the ComfyUI client's exception family to HTTP."""
    if isinstance(exc, comfyui.ComfyUIRejected):
        return ApiError(
            422,
            exc.message,
            "comfyui_rejected",
            details=exc.problems,
            comfyui_error=exc.error,
            node_errors=exc.node_errors,
        )
    if isinstance(exc, comfyui.ComfyUITimeout):
        return ApiError(504, "ComfyUI did not answer in time", "comfyui_timeout", str(exc))
    if isinstance(exc, comfyui.ComfyUIUnreachable):
        return ApiError(503, "ComfyUI not responding", "comfyui_unreachable", str(exc))
    return ApiError(502, f"ComfyUI failed: {exc}", "comfyui_error", str(exc))


def body(status_code: int, message: str, code: str, details: Any = None, **extra: Any) -> dict:
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

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        if "Retry-After" in exc.headers:
            g.retry_after = exc.headers["Retry-After"]
        payload = body(exc.status, exc.message, exc.code, exc.details, **exc.extra)
        return jsonify(payload), exc.status, exc.headers

    @app.errorhandler(comfyui.ComfyUIError)
    def _comfyui_error(exc: comfyui.ComfyUIError):
        return _api_error(from_comfyui(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response = jsonify(body(exc.code or 500, exc.description or exc.name, code))
        response.status_code = exc.code or 500
        for name in ("Allow", "Retry-After"):
            if exc.get_headers() and (value := dict(exc.get_headers()).get(name)):
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(body(500, "Internal server error", "internal_error")), 500
