"""`make stack`: the compose stack without Docker, on one machine, in the foreground.

The sidecar under gunicorn (gunicorn.conf.py) and a local nginx (stack/nginx.py) with the
repo's templates, rendered for local ports and paths, pointed at the ComfyUI at
COMFYUI_HOST:COMFYUI_PORT (start one with `make comfyui` if you have none). Ctrl-C stops both.

    STACK_BIND (127.0.0.1)       address nginx listens on; any other needs API_KEYS (or
                                 ALLOW_UNAUTHENTICATED=true), and basic auth in front of
                                 ComfyUI's UI (NGINX_COMFYUI_AUTH), or it refuses to start
    STACK_HTTP_PORT (8080)       the API, as docker compose publishes HTTP_PORT
    STACK_COMFYUI_UI_PORT (8288) ComfyUI's UI through nginx, as compose publishes COMFYUI_UI_PORT
    NGINX_*                      any template variable of nginx/defaults.env, e.g.
                                 NGINX_COMFYUI_AUTH=ComfyUI NGINX_COMFYUI_HTPASSWD=/path/file
Every sidecar setting (README, Configuration) is read as usual; behind this nginx,
TRUST_PROXY_HOPS defaults to 1, ACCEL_REDIRECT_PREFIX to /_outputs/ and ACCESS_LOG to false.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from api.config import Config
from stack.nginx import REPO_ROOT, NginxError, NginxProcess

# What the sidecar needs to know when this nginx is in front of it (docker-compose.yml sets
# the same for the container).
SIDECAR_BEHIND_NGINX = {
    "TRUST_PROXY_HOPS": "1",
    "ACCEL_REDIRECT_PREFIX": "/_outputs/",
    "ACCESS_LOG": "false",  # nginx logs every request
}


LOOPBACK = ("127.", "localhost", "::1", "[::1]")


class UnsafeBind(RuntimeError):
    """STACK_BIND would serve an API without keys beyond this machine."""


def check_bind(config: Config, env: Mapping[str, str]) -> None:
    """Refuse to publish an API without keys on a non-loopback address, unless allowed."""
    bind = env.get("STACK_BIND", "127.0.0.1")
    if bind.startswith(LOOPBACK) or config.api_keys.strip() or config.allow_unauthenticated:
        return
    raise UnsafeBind(
        f"stack: STACK_BIND={bind} without API_KEYS would let anyone on the network use the "
        "API (and the GPU). Set API_KEYS (docs/security.md), or ALLOW_UNAUTHENTICATED=true "
        "on a network you trust."
    )


def system_resolver(resolv_conf: Path = Path("/etc/resolv.conf")) -> str:
    """The first name server of this machine, for upstream names that are not addresses."""
    try:
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return f"[{parts[1]}]" if ":" in parts[1] else parts[1]
    except OSError:
        pass
    return "127.0.0.1"


def nginx_values(config: Config, env: Mapping[str, str]) -> dict[str, str]:
    """Template values for this machine: local ports and paths, this sidecar, that ComfyUI.

    MAX_REQUEST_MB and COMFYUI_UI_BIND are inputs of nginx/entrypoint.d/, as in compose: the
    body limit follows the sidecar's, and ComfyUI's UI on a public address needs basic auth.
    """
    bind = env.get("STACK_BIND", "127.0.0.1")
    api_host = "127.0.0.1" if config.api_host in ("0.0.0.0", "::", "") else config.api_host
    values = {
        "NGINX_LISTEN": f"{bind}:{env.get('STACK_HTTP_PORT', '8080')}",
        "NGINX_COMFYUI_LISTEN": f"{bind}:{env.get('STACK_COMFYUI_UI_PORT', '8288')}",
        "NGINX_SIDECAR_UPSTREAM": f"{api_host}:{config.api_port}",
        "NGINX_COMFYUI_UPSTREAM": f"{config.comfyui_host}:{config.comfyui_port}",
        "NGINX_OUTPUTS_DIR": str(Path(config.comfyui_output_dir).resolve()),
        # The sidecar's status files (a public deployment's plain polls are answered there).
        "NGINX_STATUS_DOCS_DIR": str(Path(config.status_docs_dir or "/nonexistent").resolve()),
        "NGINX_RESOLVER": system_resolver(),
        "MAX_REQUEST_MB": f"{config.max_request_mb:g}",
        "COMFYUI_UI_BIND": bind,
        # Whether nginx may send images without the sidecar's check (NGINX_PUBLIC_IMAGES).
        "API_KEYS_SET": "yes" if config.api_keys.strip() else "",
        "ALLOW_UNAUTHENTICATED": "true" if config.allow_unauthenticated else "false",
        "ALLOWED_HOSTS": config.allowed_hosts,
        # Signed image URLs: nginx checks the signatures the sidecar makes.
        "IMAGE_URL_SECRET": config.image_url_secret,
    }
    values.update({k: v for k, v in env.items() if k.startswith("NGINX_")})
    return values


def main() -> int:
    env = {**SIDECAR_BEHIND_NGINX, **os.environ}
    config = Config.from_env(env)
    if not config.status_docs_dir:
        # As docker-compose.yml wires it: a folder nginx reads (used in public deployments).
        env["STATUS_DOCS_DIR"] = str(config.workspace_path / "sidecar-status")
        config = Config.from_env(env)
    try:
        check_bind(config, env)
    except UnsafeBind as exc:
        print(exc, file=sys.stderr)
        return 2
    config.comfyui_output_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-stack-"))
    nginx = NginxProcess(workdir / "nginx", nginx_values(config, env))
    try:
        nginx.test()
    except NginxError as exc:
        print(exc, file=sys.stderr)
        return 1
    gunicorn = Path(sys.executable).with_name("gunicorn")
    sidecar = subprocess.Popen(
        [str(gunicorn), "-c", "gunicorn.conf.py", "api:create_app()"],
        cwd=REPO_ROOT,
        env=env,
        start_new_session=True,
    )
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        nginx.start()
        v = nginx.values
        print(
            f"stack: API http://{v['NGINX_LISTEN']}/api/health, ComfyUI's UI "
            f"http://{v['NGINX_COMFYUI_LISTEN']}/ (ComfyUI at {config.comfyui_url}), sidecar "
            f"on {v['NGINX_SIDECAR_UPSTREAM']}; nginx files in {nginx.workdir}. Ctrl-C stops.",
            flush=True,
        )
        while stop["signal"] is None:
            if sidecar.poll() is not None or not nginx.is_running():
                print("stack: gunicorn or nginx exited; stopping", file=sys.stderr)
                code = 1
                break
            time.sleep(0.2)
    except NginxError as exc:
        print(exc, file=sys.stderr)
        code = 1
    finally:
        nginx.stop()
        if sidecar.poll() is None:
            os.killpg(sidecar.pid, signal.SIGTERM)
            try:
                sidecar.wait(25)
            except subprocess.TimeoutExpired:
                os.killpg(sidecar.pid, signal.SIGKILL)
                sidecar.wait()
    return code


if __name__ == "__main__":
    sys.exit(main())
