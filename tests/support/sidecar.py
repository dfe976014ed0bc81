"""Runs the sidecar under a real gunicorn for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.comfyui import REPO_ROOT, free_port

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_for(condition, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class SidecarProcess:
    """gunicorn serving `api:create_app()` with the repo's gunicorn.conf.py."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        port: int | None = None,
        *,
        launcher: list[str] | None = None,
        inherit_env: bool = True,
    ) -> None:
        """`launcher` is put before gunicorn's argv (tests/deploy runs it as a container
        would, through tests/support/containers.py); `inherit_env=False` gives gunicorn
        nothing but `env` (and PATH), as a container gets nothing of the host's."""
        self.port = port or free_port()
        base = dict(os.environ) if inherit_env else {"PATH": os.environ.get("PATH", "")}
        self.env = {**base, "API_HOST": "127.0.0.1", "API_PORT": str(self.port), **env}
        self.host = self.env["API_HOST"]
        self.launcher = list(launcher or [])
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> SidecarProcess:
        gunicorn = Path(sys.executable).with_name("gunicorn")
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self._proc = subprocess.Popen(
            [*self.launcher, str(gunicorn), "-c", "gunicorn.conf.py", "api:create_app()"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def up():
            if self._proc.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{self.log_tail()}")
            try:
                with _NO_PROXY.open(self.url + "/health", timeout=2) as response:
                    return response.status == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_for(up, timeout, 0.1, "the sidecar to answer /health")
        return self

    def stop(self, timeout: float = 20) -> None:
        if self._proc and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)

    def kill(self) -> None:
        """SIGKILL the master and every worker at once: a crash, nothing cleaned up."""
        if self._proc and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)

    def worker_pids(self) -> set[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self._proc.pid)], capture_output=True, text=True
        ).stdout
        return {int(p) for p in out.split()}

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of a query on this sidecar's job store (SQLite file or PostgreSQL), with
        %s placeholders."""
        url = self.env.get("JOB_STORE_URL", "")
        if url.startswith("postgres"):
            import psycopg

            with psycopg.connect(url) as conn:
                return conn.execute(sql, args).fetchall()
        import sqlite3

        conn = sqlite3.connect(Path(self.env["WORKSPACE_PATH"]) / "sidecar" / "jobs.sqlite3")
        try:
            return conn.execute(sql.replace("%s", "?"), args).fetchall()
        finally:
            conn.close()

    def tracker_state(self) -> dict | None:
        url = self.env.get("JOB_STORE_URL", "")
        key = f"tracker:{self.env['NODE_ID']}" if url.startswith("postgres") else "tracker"
        rows = self.query("SELECT value FROM meta WHERE key = %s", (key,))
        return json.loads(rows[0][0]) if rows else None
