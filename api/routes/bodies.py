"""Reading request bodies and query arguments the same way in every route."""

from __future__ import annotations

import math
from typing import Any

from flask import current_app, request

from api.exceptions import InvalidRequest


def _parsed() -> Any:
    """The body parsed as JSON (None when there is none); InvalidRequest saying what is wrong
    when it is not JSON. Its Content-Type was checked before the view ran (api/access.py)."""
    data = request.get_data(cache=True)
    if not data.strip():
        return None
    try:
        # The app's strict parser (api/strict_json.py): no NaN/Infinity, bounded depth.
        return current_app.json.loads(data)
    except ValueError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None


def json_body(required: bool = True) -> Any:
    """The request's JSON; InvalidRequest when it is missing (and required) or malformed."""
    body = _parsed()
    if body is None and required:
        raise InvalidRequest("Request body must be JSON (Content-Type: application/json)")
    return body


def json_object(required: bool = True, what: str = "") -> dict:
    """The request's JSON object ({} when optional and absent or empty)."""
    body = _parsed()
    if not body and not required:
        return {}
    if not isinstance(body, dict):
        raise InvalidRequest(f"Request body must be a JSON object{what}")
    return body


def number_arg(name: str, low: float, high: float) -> float | None:
    """A numeric query argument within [low, high], or None when absent."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number (got {raw!r})", {"field": name}) from None
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(
            f"{name} must be between {low:g} and {high:g} (got {value:g})",
            {"field": name, "allowed": {"minimum": low, "maximum": high}},
        )
    return value


def flag(value: Any, name: str) -> bool:
    """A boolean from JSON or a query string ("1", "true", "yes"); None counts as false."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be a boolean", {"field": name})
    return value
