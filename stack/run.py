"""`make run`: the sidecar under gunicorn, working for any user on a fresh machine.

Before gunicorn starts, and only through its environment (the sidecar reads its settings as
usual):
- settings in ./.env that the environment does not set are added (the README's Configuration
  table; the same file docker compose reads);
- without WORKSPACE_PATH, state goes to /workspace when that can be written, else to
  ./.workspace in the checkout; the first lines say where;
- with neither COMFYUI_HOST nor COMFYUI_PORT set and nothing answering on the default address,
  the project's own CPU ComfyUI (`make comfyui`, tests/support/run_comfyui.py) starts beside the
  sidecar, writing into its output folder, and stops with it. Setting either variable turns
  this off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from api.config import SETTINGS, Config

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN_VARS = ("GUNICORN_WORKERS", "GUNICORN_THREADS", "GUNICORN_TIMEOUT")
DEFAULT_WORKSPACE = Path("/workspace")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(message: str) -> None:
    print(f"make run: {message}", file=sys.stderr, flush=True)


def read_dotenv(path: Path) -> dict[str, str]:
    """NAME=value lines of a .env file (comments and blank lines skipped, quotes removed)."""
    found: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            line = line.strip()
            name, sep, value = line.partition("=")
            if not sep or line.startswith("#"):
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            found[name.strip()] = value
    return found


def with_dotenv(env: Mapping[str, str], dotenv: Mapping[str, str]) -> dict[str, str]:
    """The environment plus the sidecar's settings from .env that it does not set itself."""
    known = {s.env for s in SETTINGS} | set(GUNICORN_VARS)
    merged = dict(env)
    for name, value in dotenv.items():
        if name in known and name not in env:
            merged[name] = value
    return merged


def writable(path: Path) -> bool:
    """Whether path is (or can be created as) a folder this user can write."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def choose_workspace(env: Mapping[str, str], checkout: Path) -> tuple[Path, str]:
    """WORKSPACE_PATH as set, else /workspace if writable, else ./.workspace; and why."""
    if env.get("WORKSPACE_PATH"):
        return Path(env["WORKSPACE_PATH"]), "WORKSPACE_PATH"
    if writable(DEFAULT_WORKSPACE):
        return DEFAULT_WORKSPACE, "the default"
    return checkout / ".workspace", f"{DEFAULT_WORKSPACE} is not writable for this user"


def comfyui_answers(url: str) -> bool:
    try:
        with _NO_PROXY.open(url + "/system_stats", timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    env = with_dotenv(os.environ, read_dotenv(Path.cwd() / ".env"))
    workspace, why = choose_workspace(env, Path.cwd())
    env["WORKSPACE_PATH"] = str(workspace)
    config = Config.from_env(env)
    say(
        f"state (job database) in {config.state_dir}, images in {config.comfyui_output_dir} ({why})"
    )
    comfyui = None
    if "COMFYUI_HOST" in env or "COMFYUI_PORT" in env:
        say(f"ComfyUI at {config.comfyui_url} (COMFYUI_HOST/COMFYUI_PORT)")
    elif comfyui_answers(config.comfyui_url):
        say(f"ComfyUI answers at {config.comfyui_url}")
    else:
        say(
            f"nothing answers at {config.comfyui_url}: starting the project's CPU ComfyUI there "
            "(no models: the pipeline_check workflow runs, FLUX.2 does not; the first time it "
            "installs into ~/.cache/comfy-sidecar). Set COMFYUI_HOST or COMFYUI_PORT to use "
            "your own."
        )
        config.comfyui_output_dir.mkdir(parents=True, exist_ok=True)
        comfyui = subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_comfyui"],
            cwd=REPO_ROOT,
            env=env,
            start_new_session=True,
        )
    gunicorn = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py",
         "api:create_app()"],
        cwd=REPO_ROOT,
        env=env,
        start_new_session=True,
    )  # fmt: skip
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gunicorn.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        code = gunicorn.wait()
    finally:
        if comfyui is not None and comfyui.poll() is None:
            say("stopping the CPU ComfyUI")
            os.killpg(comfyui.pid, signal.SIGTERM)
            try:
                comfyui.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(comfyui.pid, signal.SIGKILL)
                comfyui.wait()
    return 0 if stopping else code


if __name__ == "__main__":
    sys.exit(main())
