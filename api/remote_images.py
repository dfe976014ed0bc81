"""In a cluster: an image another node's ComfyUI wrote, fetched from that node.

Used when the nodes share neither object storage nor an output folder: the node that ran the
job (known from the job, or from the images table of the shared store) serves the file, and
this node passes it on, streamed, with the caller's own credentials. A request that was itself
passed on is never passed on again.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Response, request

from api import outputs
from api.exceptions import NotFound

# Marks a request one node passed to another.
FORWARDED_HEADER = "X-Sidecar-Forwarded"
PASSED_HEADERS = ("Authorization", "X-API-Key", "X-Request-ID", "Range", "If-None-Match")
KEPT_HEADERS = ("Content-Type", "Content-Length", "ETag", "Last-Modified", "Cache-Control",
                "Content-Range", "Accept-Ranges")  # fmt: skip
TIMEOUT = (3.0, 30.0)
CHUNK = 256 * 1024


def forwarded() -> bool:
    """True for a request another node passed on (it is answered from this node alone)."""
    return request.headers.get(FORWARDED_HEADER) == "1"


def fetch(api_url: str, node: str) -> Response:
    """GET this request's path from another node's API and stream its answer back."""
    headers = {name: request.headers[name] for name in PASSED_HEADERS if name in request.headers}
    headers[FORWARDED_HEADER] = "1"
    import requests  # here: only a cluster without shared storage needs it (~3.6 MB a worker)

    url = api_url.rstrip("/") + request.full_path.rstrip("?")
    try:
        upstream = requests.get(url, headers=headers, stream=True, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise NotFound(
            f"Image not found here, and node {node}, which made it, does not answer ({exc})"
        ) from None
    if upstream.status_code >= 400:
        upstream.close()
        raise NotFound(
            f"Image not found (node {node}, which made it, answered {upstream.status_code})"
        )

    def body() -> Iterator[bytes]:
        with upstream:
            yield from upstream.iter_content(CHUNK)

    response = Response(body(), status=upstream.status_code, headers=outputs.UNBUFFERED)
    for name in KEPT_HEADERS:
        if name in upstream.headers:
            response.headers[name] = upstream.headers[name]
    return response
