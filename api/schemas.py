"""JSON Schema building blocks for the API's documented shapes (request and response bodies).

Plain dicts, nothing else: the modules that produce a shape declare its schema beside it
(api/job.py for the job's status), and api/openapi.py assembles them into the document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
BOOLEAN = {"type": "boolean"}
OBJECT = {"type": "object"}
ANY: dict = {}
TIMESTAMP = {"type": "string", "format": "date-time"}


def nullable(schema: dict) -> dict:
    """The schema, or null."""
    return {"anyOf": [schema, {"type": "null"}]}


def array(items: dict) -> dict:
    return {"type": "array", "items": items}


def obj(properties: Mapping[str, dict], optional: Iterable[str] = (), **extra: Any) -> dict:
    """An object whose properties are all present except those named in `optional`."""
    skip = set(optional)
    return {
        "type": "object",
        "required": [name for name in properties if name not in skip],
        "properties": dict(properties),
        **extra,
    }


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}
