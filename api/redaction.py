"""Keeping the server's layout out of what tenants read: absolute paths and internal URLs.

ComfyUI's error messages name files by their absolute path on the server ("No such file or
directory: '/workspace/ComfyUI/input/x.png'") and the sidecar's own transport errors name
ComfyUI's internal address. The operator (an admin key, or this machine without keys) reads
them as they are; anyone else reads a path as its last part and a URL without its origin.
"""

from __future__ import annotations

import re
from typing import Any

# Two or more /segments not preceded by a word, a dot, a colon or a slash (so "a/b", "./x",
# "http://h/x" and "/api" alone are left alone).
_POSIX = re.compile(r"(?<![\w.~:/-])(?:/[^\s/'\"`<>|:;,(){}\[\]\\]+){2,}/?")
_WINDOWS = re.compile(r"(?<![\w])[A-Za-z]:\\(?:[^\s\\'\"<>|:]+\\)*[^\s\\'\"<>|:]*")
_ORIGIN = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/'\"<>]+")


def _last_part(match: re.Match) -> str:
    parts = [p for p in re.split(r"[/\\]", match.group(0)) if p]
    return parts[-1] if parts else ""


def text(value: str) -> str:
    """The string with each absolute path cut to its last part and each URL's origin removed."""
    value = _ORIGIN.sub("", value)
    value = _WINDOWS.sub(_last_part, value)
    return _POSIX.sub(_last_part, value)


def scrub(value: Any) -> Any:
    """`text` applied to every string in a JSON-like value (dict keys too)."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value
