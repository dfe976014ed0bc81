"""A cluster on one machine for the tests: a real PostgreSQL, CPU ComfyUIs, one sidecar per
ComfyUI (each under gunicorn, with JOB_STORE_URL pointing at the shared store), and the shipped
nginx balancing the API over the sidecars."""

from __future__ import annotations

import collections
import itertools
import json
import shutil
import threading
from pathlib import Path

import psycopg
import requests

from api.config import Config
from stack.__main__ import nginx_values
from stack.nginx import NginxProcess
from tests.conftest import SHIPPED_WORKFLOWS, TEST_WORKFLOWS
from tests.support.comfyui import ComfyUIProcess, comfyui_env, free_port
from tests.support.sidecar import SidecarProcess, wait_for

SLEEP = {"workflow": "sidecar_test_sleep"}
FINAL = ("completed", "failed", "cancelled")


def start_comfyuis(root: Path, names: dict[str, bool]) -> dict[str, ComfyUIProcess]:
    """Start one ComfyUI per name at once (each with the test node or not)."""
    python, comfy_dir = comfyui_env()
    processes = {
        name: ComfyUIProcess(python, comfy_dir, root / f"comfy-{name}", test_nodes=with_nodes)
        for name, with_nodes in names.items()
    }
    errors = []

    def start(process):
        try:
            process.start()
        except Exception as exc:  # reported below, after every start finished
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(p,)) for p in processes.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for process in processes.values():
            process.stop()
        raise errors[0]
    return processes


class Node:
    """One sidecar of the cluster, with its own ComfyUI."""

    def __init__(self, name: str, comfy: ComfyUIProcess, store_url: str, root: Path, **env):
        self.name = name
        self.comfy = comfy
        self.store_url = store_url
        self.root = root
        self.port = free_port()
        workflows = root / "workflows"
        workflows.mkdir(parents=True, exist_ok=True)
        for source in (SHIPPED_WORKFLOWS, TEST_WORKFLOWS):
            for path in source.glob("*.json"):
                shutil.copy(path, workflows / path.name)
        self.env = {
            "COMFYUI_HOST": "127.0.0.1",
            "COMFYUI_PORT": str(comfy.port),
            "WORKSPACE_PATH": str(root / "workspace"),
            "COMFYUI_OUTPUT_DIR": str(comfy.output_dir),
            "WORKFLOWS_DIR": str(workflows),
            "JOB_STORE_URL": store_url,
            "NODE_ID": name,
            "NODE_URL": f"http://127.0.0.1:{self.port}",
            "COMFYUI_MAX_PENDING": "2",
            "LEASE_SECONDS": "3",
            "RECONCILE_INTERVAL": "0.5",
            "LOST_JOB_GRACE": "3",
            "GUNICORN_WORKERS": "2",
            "RAW_GRAPHS_ENABLED": "true",
            "RATE_LIMIT": "",
            "RATE_LIMIT_GENERATE": "",
            "MAX_UNFINISHED_JOBS": "1000",
            "TRUST_PROXY_HOPS": "1",
            "LOG_LEVEL": "info",
            **env,
        }
        self.process: SidecarProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Node:
        self.process = SidecarProcess(self.env, self.root / "gunicorn.log", port=self.port)
        self.process.start()
        wait_for(self.connected, 60, 0.1, f"node {self.name}'s tracker and heartbeat")
        return self

    def connected(self) -> bool:
        """The node's tracker has its WebSocket and its heartbeat is in the shared store."""
        with psycopg.connect(self.store_url) as conn:
            meta = conn.execute(
                "SELECT value FROM meta WHERE key = %s", (f"tracker:{self.name}",)
            ).fetchone()
            node = conn.execute(
                "SELECT 1 FROM nodes WHERE id = %s", (self.name,)
            ).fetchone()  # fmt: skip
        return bool(meta and json.loads(meta[0]).get("websocket") == "connected" and node)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


class Cluster:
    """Nodes sharing one PostgreSQL, and nginx in front of all of them."""

    def __init__(self, root: Path, store_url: str, comfys: dict[str, ComfyUIProcess], **env):
        self.root = root
        self.store_url = store_url
        self.nodes = {
            name: Node(name, comfy, store_url, root / name, **env) for name, comfy in comfys.items()
        }
        self.nginx: NginxProcess | None = None

    def start(self) -> Cluster:
        for node in self.nodes.values():
            node.start()
        first, *others = self.nodes.values()
        values = nginx_values(
            Config.from_env(first.env),
            {"STACK_HTTP_PORT": str(free_port()), "STACK_COMFYUI_UI_PORT": str(free_port())},
        )
        values["NGINX_SIDECAR_UPSTREAM"] = f"127.0.0.1:{first.port}"
        values["NGINX_SIDECAR_EXTRA_SERVERS"] = " ".join(
            f"server 127.0.0.1:{node.port} resolve;" for node in others
        )
        values["NGINX_COMFYUI_UPSTREAM"] = f"127.0.0.1:{first.comfy.port}"
        self.nginx = NginxProcess(self.root / "nginx", values)
        self.nginx.start()
        return self

    @property
    def url(self) -> str:
        return self.nginx.url

    def log_tails(self, lines: int = 60) -> str:
        """The end of each node's log: what a failed test shows of the cluster."""
        return "\n".join(
            f"--- node {node.name} ({node.root / 'gunicorn.log'}):\n{node.process.log_tail(lines)}"
            for node in self.nodes.values()
            if node.process is not None
        )

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for node in self.nodes.values():
            node.stop()
            node.comfy.stop()


_DATABASES = itertools.count()  # cluster_0, cluster_1, ... on the session's server


def start_cluster(root: Path, postgres, names: dict[str, bool], **env) -> Cluster:
    # A database of its own: a module's cluster keeps running while a test starts another, and
    # emptying a shared one under it made its nodes fail every statement until then.
    store_url = postgres.database(f"cluster_{next(_DATABASES)}")
    comfys = start_comfyuis(root, names)
    cluster = Cluster(root, store_url, comfys, **env)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise


def prompts_by_job(comfy: ComfyUIProcess) -> collections.Counter:
    """How many prompts one ComfyUI ran or holds for each sidecar job (from extra_data)."""
    counts = collections.Counter()
    history = requests.get(f"{comfy.url}/history", params={"max_items": 5000}, timeout=60).json()
    queue = requests.get(f"{comfy.url}/queue", timeout=30).json()
    items = [entry["prompt"] for entry in history.values()]
    items += queue["queue_running"] + queue["queue_pending"]
    for item in items:
        extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
        if "sidecar_job_id" in extra:
            counts[extra["sidecar_job_id"]] += 1
    return counts
