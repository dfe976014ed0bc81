"""The compose services of `docker compose config --format json`, run as their containers would
be on a machine without a Docker engine (tests/deploy).

What a container gets, and how each is stood in for here:
- its own network address: a loopback address of its own (127.42.0.x), on which it listens
  on its container ports; published ports are checked against the rendering, not forwarded;
- Docker's DNS (127.0.0.11) answering service names: tests/support/dns.py on that address,
  and /etc/resolv.conf and /etc/hosts (with its host name) bind-mounted over the host's in a
  private mount namespace (unshare), as Docker mounts them into a container;
- its volumes: container paths in its environment and command become the host folders that
  the rendering binds there (`translate`);
- its user: the image's USER, set with setpriv after the mounts; a Python under /root (not
  searchable by other users) is made reachable inside that namespace only.
Needs root (tests run as root), unshare and setpriv (util-linux).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

SUBNET = "127.42.0."


def available() -> str | None:
    """Why the emulation cannot run here, or None."""
    if os.geteuid() != 0:
        return "runs containers' users and mounts: needs root"
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is missing"
    return None


class Container:
    """One service of the rendering: address, mounts, environment and user."""

    def __init__(
        self,
        name: str,
        service: Mapping,
        address: str,
        volumes: Mapping[str, Path],
        workdir: Path,
    ) -> None:
        self.name = name
        self.service = service
        self.address = address
        self.hostname = f"{name}-container"
        # container path -> host folder: the rendering's bind mounts, plus named volumes
        # (which Docker keeps in its own storage) as folders given by the test.
        self.mounts: dict[str, Path] = {}
        for mount in service.get("volumes", []):
            if mount["type"] == "bind":
                self.mounts[mount["target"]] = Path(mount["source"])
            elif mount["type"] == "volume":
                self.mounts[mount["target"]] = volumes[mount["source"]]
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        # A tmpfs mount: an empty folder of its own (the mount point; what is made inside it is
        # the container's business).
        for number, target in enumerate(service.get("tmpfs") or []):
            self.mounts[target] = workdir / f"tmpfs-{number}" / PurePosixPath(target).name
            self.mounts[target].parent.mkdir(exist_ok=True)

    def translate(self, value: str) -> str:
        """A container path (alone or as a word of a command line) as the host sees it."""

        def one(word: str) -> str:
            path = PurePosixPath(word)
            for target in sorted(self.mounts, key=len, reverse=True):
                if path == PurePosixPath(target) or path.is_relative_to(target):
                    return str(self.mounts[target] / path.relative_to(target))
            return word

        if value.startswith("/") and " " not in value:
            return one(value)
        return " ".join(one(word) for word in value.split(" "))

    def environment(self, image_env: Mapping[str, str] = ()) -> dict[str, str]:
        """The image's ENV, then the service's environment (unset ones left out), with
        container paths translated and "listen everywhere" made this container's address."""
        env = dict(image_env)
        for name, value in (self.service.get("environment") or {}).items():
            if value is not None:
                env[name] = unescape(value)
        for name, value in env.items():
            if value in ("0.0.0.0", "::"):
                env[name] = self.address
            else:
                env[name] = self.translate(value)
        return env

    def launcher(self, user: str | None = None) -> list[str]:
        """argv prefix that runs a command inside this container's stand-in: its resolv.conf,
        hosts file and host name, then as `user` ("uid:gid") when given."""
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.11\noptions ndots:0\n")
        hosts = self.workdir / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n{self.address} {self.hostname}\n")
        script = [
            "set -e",
            'mount --bind "$1" /etc/resolv.conf',
            'mount --bind "$2" /etc/hosts',
            'hostname "$3"',
        ]
        if user:
            uid, _, gid = user.partition(":")
            script += _reachable_python()
            script.append(f"shift 3; exec setpriv --reuid={uid} --regid={gid or uid} "
                          '--clear-groups "$@"')  # fmt: skip
        else:
            script.append('shift 3; exec "$@"')
        return [
            "unshare", "--mount", "--uts", "--propagation", "private",
            "sh", "-c", "; ".join(script), "sh", str(resolv), str(hosts), self.hostname,
        ]  # fmt: skip


def unescape(value: str) -> str:
    """`docker compose config` writes a literal $ as $$ (so that its output loads again);
    the container gets one."""
    return value.replace("$$", "$")


def command(service: Mapping) -> list[str]:
    """The service's entrypoint and command as the container runs them."""
    return [unescape(w) for w in [*service.get("entrypoint", []), *service.get("command", [])]]


def _reachable_python() -> list[str]:
    """Shell lines making this Python's installation reachable for another user when it lies
    in a folder only root may enter (/root/.pyenv): that folder is re-mounted on a fresh,
    world-readable /root, in this mount namespace only."""
    base = Path(sys.base_prefix).resolve()
    if not base.is_relative_to("/root") or os.stat("/root").st_mode & 0o001:
        return []
    top = Path("/root") / base.relative_to("/root").parts[0]
    hold = tempfile.mkdtemp(prefix="python-hold-")
    os.chmod(hold, 0o755)
    return [
        f"mount --bind {shlex.quote(str(top))} {shlex.quote(hold)}",
        "mount -t tmpfs -o mode=755 tmpfs /root",
        f"mkdir -p {shlex.quote(str(top))}",
        f"mount --move {shlex.quote(hold)} {shlex.quote(str(top))}",
    ]


# The official nginx image's entrypoint, as it handles what compose gives it: every
# /docker-entrypoint.d/*.envsh sourced under `set -e` (what they export reaches the rendering;
# a failure stops the container), then 20-envsubst-on-templates.sh: each
# /etc/nginx/templates/**/*.template through envsubst restricted to the names of the
# environment variables that match NGINX_ENVSUBST_FILTER, into /etc/nginx/conf.d/.
IMAGE_ENVSH = 'set -e; for f in "$@"; do . "$f"; done; env -0'
IMAGE_ENVSUBST = (
    "defined=$(printf '${%s} ' $(awk \"END { for (name in ENVIRON) "
    '{ print ( name ~ /${NGINX_ENVSUBST_FILTER}/ ) ? name : \\"\\" } }" < /dev/null)); '
    'envsubst "$defined" < "$1"'
)
TEMPLATES = PurePosixPath("/etc/nginx/templates")
ENTRYPOINT_D = PurePosixPath("/docker-entrypoint.d")


class EntrypointRefused(RuntimeError):
    """The image's entrypoint stopped before nginx (an entrypoint.d script said why)."""


def nginx_entrypoint(container: Container, conf_d: Path) -> dict[str, str]:
    """Run the image's entrypoint steps for `container` (the nginx service) with its rendered
    environment and mounts; returns the environment nginx starts with."""
    import subprocess

    env = container.environment()
    for name, value in env.items():
        if name.endswith("_LISTEN") and value.split()[0].isdigit():
            env[name] = f"{container.address}:{value}"  # its own address, as in a container
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    mounted = {PurePosixPath(target): source for target, source in container.mounts.items()}
    scripts = sorted(
        (str(source) for target, source in mounted.items() if target.parent == ENTRYPOINT_D),
        key=lambda p: Path(p).name,
    )
    proc = subprocess.run(
        ["sh", "-c", IMAGE_ENVSH, "sh", *scripts], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise EntrypointRefused(proc.stderr.strip())
    env = dict(e.split("=", 1) for e in proc.stdout.split("\0") if "=" in e)
    for target, source in mounted.items():
        if not target.is_relative_to(TEMPLATES):
            continue
        files = [source] if source.is_file() else sorted(source.rglob("*.template"))
        for template in files:
            relative = target.relative_to(TEMPLATES)
            if template != source:
                relative = relative / template.relative_to(source)
            out = conf_d / str(relative).removesuffix(".template")
            out.parent.mkdir(parents=True, exist_ok=True)
            rendered = subprocess.run(
                ["sh", "-c", IMAGE_ENVSUBST, "sh", str(template)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            out.write_text(rendered)
    return env


def dockerfile_image(dockerfile: Path) -> tuple[dict[str, str], str, list[str]]:
    """The sidecar image's ENV, USER and CMD, read from the Dockerfile that builds it."""
    import json
    import re

    text = dockerfile.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", text, re.M):
        for name, value in re.findall(r"(\w+)=(\S+)", line):
            env[name] = value
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    (cmd,) = re.findall(r"^CMD (\[.+\])$", text, re.M)
    return env, user, json.loads(cmd)
