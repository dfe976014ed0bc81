"""The settings of a cluster: the shared job store, and this node's part in it
(docs/scaling.md)."""

from __future__ import annotations

from api.settings import Setting, boolean, positive_float, positive_int


def store_url(raw: str) -> str:
    if raw and not raw.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ValueError("expected sqlite:///<path> or postgresql://user:password@host/db")
    return raw


CLUSTER: tuple[Setting, ...] = (
    Setting(
        "JOB_STORE_URL",
        "",
        store_url,
        "Where jobs are kept. Empty or sqlite:///<path>: the embedded SQLite store (in "
        "STATE_DIR by default; one node). postgresql://user:password@host/db: a store shared "
        "by every node of a cluster (docs/scaling.md).",
    ),
    Setting(
        "NODE_ID",
        "(host name and ComfyUI address)",
        str,
        "This node's name in a cluster; keep it stable across restarts (a node that comes back "
        "under its name takes up the jobs it still holds).",
    ),
    Setting(
        "NODE_URL",
        "",
        str,
        "How the other nodes of a cluster reach this node's API (e.g. http://gpu1:5000), to "
        "fetch images from it when the nodes share neither object storage nor an output "
        "folder.",
    ),
    Setting(
        "COMFYUI_MAX_PENDING",
        "2",
        positive_int,
        "In a cluster: most jobs this node keeps in its ComfyUI at once (running + waiting); "
        "the rest wait in the shared queue for whichever node has room first.",
    ),
    Setting(
        "LEASE_SECONDS",
        "30",
        positive_float,
        "In a cluster: how long a node holds a job without renewing its lease (it renews every "
        "third of this); a node silent for longer loses its jobs to the others.",
    ),
    Setting(
        "OUTPUTS_SHARED",
        "false",
        boolean,
        "In a cluster: every node sees every node's images in COMFYUI_OUTPUT_DIR (a shared "
        "file system), so any node serves any image from its own folder.",
    ),
)
