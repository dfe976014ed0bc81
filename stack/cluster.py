"""`make stack-cluster`: a cluster of two nodes on this machine, in the foreground.

What docker-compose.cluster.yml runs on a GPU host, without Docker: a PostgreSQL job store
(a throwaway one in a temporary folder, unless JOB_STORE_URL names yours), one CPU ComfyUI per
node (unless COMFYUI_PORTS names running ones, e.g. 8188,8189), one sidecar per ComfyUI under
gunicorn, and nginx balancing the API over the sidecars. Ctrl-C stops everything it started.

    STACK_NODES (2)               how many nodes
    STACK_HTTP_PORT (8080)        the API, through nginx
    STACK_COMFYUI_UI_PORT (8288)  the first node's ComfyUI UI, through nginx
    API_KEYS                      as for one sidecar (without keys: loopback only)
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

from api.config import Config
from stack.__main__ import nginx_values
from stack.nginx import NginxError, NginxProcess
from tests.support.cluster import Node, start_comfyuis
from tests.support.comfyui import ComfyUIProcess


def say(message: str) -> None:
    print(f"stack-cluster: {message}", flush=True)


def main() -> int:
    env = dict(os.environ)
    count = int(env.get("STACK_NODES", "2"))
    root = Path(tempfile.mkdtemp(prefix="sidecar-cluster-"))
    started: list = []
    try:
        store_url = env.get("JOB_STORE_URL", "")
        if not store_url.startswith("postgres"):
            from tests.support.postgres import PostgresProcess

            postgres = PostgresProcess().start()
            started.append(postgres.close)
            store_url = postgres.url
            say(f"PostgreSQL (throwaway, in {postgres.root}) at {store_url}")
        names = [f"node-{i}" for i in range(1, count + 1)]
        ports = [p for p in env.get("COMFYUI_PORTS", "").split(",") if p.strip()]
        if ports:
            if len(ports) != count:
                raise SystemExit(
                    f"stack-cluster: COMFYUI_PORTS names {len(ports)} ports for {count} nodes"
                )
            pairs = zip(names, ports, strict=True)
            comfys = {name: _existing(int(port), root / name) for name, port in pairs}
        else:
            say(f"starting {count} CPU ComfyUIs (FLUX.2 cannot run on them; pipeline_check can)")
            comfys = start_comfyuis(root, {name: True for name in names})
            started += [comfy.stop for comfy in comfys.values()]
        keys = {k: env[k] for k in ("API_KEYS", "ALLOW_UNAUTHENTICATED") if k in env}
        nodes = []
        for name, comfy in comfys.items():
            node = Node(name, comfy, store_url, root / name, **keys).start()
            started.append(node.stop)
            nodes.append(node)
            say(f"{name}: sidecar {node.url}, ComfyUI {comfy.url}")
        values = nginx_values(Config.from_env(nodes[0].env), env)
        values["NGINX_SIDECAR_UPSTREAM"] = f"127.0.0.1:{nodes[0].port}"
        values["NGINX_SIDECAR_EXTRA_SERVERS"] = " ".join(
            f"server 127.0.0.1:{node.port} resolve;" for node in nodes[1:]
        )
        values["NGINX_COMFYUI_UPSTREAM"] = f"127.0.0.1:{nodes[0].comfy.port}"
        nginx = NginxProcess(root / "nginx", values)
        nginx.start()
        started.append(nginx.stop)
        # Blocked only now, when everything is started: children inherit the mask, and a
        # ComfyUI or gunicorn that inherited it would ignore its own SIGTERM when stopped.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        say(
            f"API http://{values['NGINX_LISTEN']}/api/health (balanced over {count} nodes),"
            f" fleet http://{values['NGINX_LISTEN']}/api/nodes. Ctrl-C stops."
        )
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    except NginxError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        for stop in reversed(started):
            stop()


def _existing(port: int, base: Path) -> ComfyUIProcess:
    """A ComfyUI this machine already runs, described for Node (it is never started here)."""
    process = ComfyUIProcess(sys.executable, Path("."), base, port=port)
    process.output_dir.mkdir(parents=True, exist_ok=True)
    return process


if __name__ == "__main__":
    sys.exit(main())
