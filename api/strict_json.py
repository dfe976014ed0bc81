"""Request JSON as the standard defines it, and no deeper than any real request needs.

Python's json module accepts NaN, Infinity and -Infinity, which are not JSON: a NaN
`timeout_minutes` used to become a deadline that never comes, and a NaN in a status body breaks
every strict parser that reads it. A body nested a hundred thousand levels deep makes the
parser (and anything that walks the result) hit Python's recursion limit. Both are refused
here, as invalid JSON, so they end as a 400 like any other malformed body.
"""

from __future__ import annotations

import json
from typing import Any

from flask.json.provider import DefaultJSONProvider

# A workflow graph is 3-4 levels deep and metadata rarely more than a handful.
MAX_DEPTH = 64


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON value (use a number or null)")


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """ValueError when containers nest deeper than `limit` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise ValueError(f"JSON nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children)


def loads(text: str | bytes, **kwargs: Any) -> Any:
    """json.loads without NaN/Infinity and with a depth limit; ValueError for both."""
    kwargs.setdefault("parse_constant", _refuse_constant)
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    check_depth(value)
    return value


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON with strict parsing of what clients send (see the module docstring)."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s, **kwargs)
