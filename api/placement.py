"""Where a cluster job must run: on the node that holds its input images.

Each ComfyUI reads input images from its own input folder, and earlier results (" [output]")
from its own output folder. In a cluster, an upload lands in the ComfyUI of the node that took
the upload request, and a job's images in the ComfyUI of the node that ran it; nginx may send
the next request to any node. So a job that loads such a file is pinned to the node that has
it (only that node claims it), and a job whose images lie on two different nodes is refused
with a 400 at once, rather than failed by a ComfyUI that cannot find one of them later.

Files nobody uploaded through the API (an operator's own files in every input folder) are
looked up nowhere: they pin nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from api.exceptions import InvalidImage
from api.graphs.images import ANNOTATION

if TYPE_CHECKING:
    from api.postgres_store import PostgresJobStore


def pinned_node(references: list[str], store: PostgresJobStore) -> str | None:
    """The node every one of these LoadImage values must be loaded on, or None (anywhere)."""
    found: dict[str, str] = {}  # node -> one of the files it holds, for the message
    for value in references:
        match = ANNOTATION.search(value)
        kind = match.group(1) if match else "input"
        name = value[: match.start()] if match else value
        node = None
        if kind == "input":
            node = store.upload_node(name)
        elif kind == "output":
            maker = store.find_by_image(name)
            node = maker.node if maker is not None else None
        if node is not None:
            found.setdefault(node, name)
    if len(found) > 1:
        where = ", ".join(f"{name} on node {node}" for node, name in sorted(found.items()))
        raise InvalidImage(
            f"images: the input images are on different nodes of the cluster ({where}), and a"
            " job runs on one node: upload them again through one node, or use results of"
            " one node's jobs",
            {"field": "images"},
        )
    return next(iter(found), None)
