"""Reading a server-sent event stream in tests."""

from __future__ import annotations

import json
from collections.abc import Iterator


def server_sent_events(response) -> Iterator[tuple[str, dict]]:
    """Each event of a streamed `requests` response as (kind, JSON data), as it arrives, until
    the stream closes."""
    kind, data = None, []
    for raw in response.iter_lines(decode_unicode=True):
        if raw.startswith("event:"):
            kind = raw.split(":", 1)[1].strip()
        elif raw.startswith("data:"):
            data.append(raw.split(":", 1)[1].strip())
        elif raw == "" and kind:
            yield kind, json.loads("\n".join(data))
            kind, data = None, []
