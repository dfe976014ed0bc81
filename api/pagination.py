"""limit/offset query parameters, checked the same way on every listing endpoint."""

from __future__ import annotations

from flask import request

from api.exceptions import InvalidRequest
from api.schemas import INTEGER, nullable

MAX_OFFSET = 10**12
# The answer fields every paginated listing carries beside its items (OpenAPI).
ENVELOPE_PROPERTIES = {
    "total": INTEGER,
    "limit": INTEGER,
    "offset": INTEGER,
    "next_offset": nullable(INTEGER),
}


def page(default_limit: int = 50, max_limit: int = 1000) -> tuple[int, int]:
    """(limit, offset) from the query string; 400 naming the parameter when it is bad."""
    return (
        _int("limit", default_limit, 1, max_limit),
        _int("offset", 0, 0, MAX_OFFSET),
    )


def parameters(default_limit: int, max_limit: int) -> list[dict]:
    """The limit and offset query parameters as OpenAPI describes them."""
    return [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": max_limit},
            "description": f"Items per page (default {default_limit})",
        },
        {
            "name": "offset",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
        },
    ]


def _int(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(
            f"{name} must be an integer between {low} and {high} (got {raw!r})",
            {"field": name, "allowed": {"minimum": low, "maximum": high}},
        ) from None
    if not low <= value <= high:
        raise InvalidRequest(
            f"{name} must be between {low} and {high} (got {value})",
            {"field": name, "allowed": {"minimum": low, "maximum": high}},
        )
    return value


def envelope(total: int, limit: int, offset: int, count: int) -> dict:
    """The pagination fields every listing carries beside its items."""
    following = offset + count
    return {
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": following if following < total else None,
    }
