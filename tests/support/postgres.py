"""A real, throwaway PostgreSQL server for the tests of the shared job store.

Debian's server binaries (scripts/ensure-postgresql.sh installs them when missing), a cluster
made by initdb in a temporary folder, its socket in that folder and TCP on a free loopback
port, fsync off (a test cluster never outlives its machine). The server refuses to run as
root, so when the tests run as root the cluster belongs to the `postgres` user Debian's
package creates (or to PG_USER) and every server command runs as it.

    with PostgresProcess() as pg:
        pg.url            # postgresql://sidecar@127.0.0.1:<port>/sidecar
        pg.restart()      # same data, same port
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.comfyui import free_port

ENSURE = Path(__file__).resolve().parents[2] / "scripts" / "ensure-postgresql.sh"


class PostgresError(RuntimeError):
    """The server could not be set up or started (the message carries its log)."""


def bindir() -> Path:
    """The folder holding initdb and pg_ctl (installed first when missing)."""
    subprocess.run(["bash", str(ENSURE)], check=True, timeout=900)
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(os.path.realpath(pg_ctl)).parent
    raise PostgresError("no PostgreSQL server binaries found")


def _version(path: str) -> tuple:
    part = Path(path).parents[1].name
    return tuple(int(x) for x in part.split(".") if x.isdigit())


class PostgresProcess:
    """One PostgreSQL server with one database (`sidecar`) owned by the role `sidecar`."""

    def __init__(self, port: int | None = None) -> None:
        self.bin = bindir()
        self.port = port or free_port()
        self.user = None if os.getuid() != 0 else os.environ.get("PG_USER", "postgres")
        self.root = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self.user:
            # Only the cluster's owner may read it; the folder is made for that user.
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._initdb()

    @property
    def url(self) -> str:
        return f"postgresql://sidecar@127.0.0.1:{self.port}/sidecar"

    def database(self, name: str) -> str:
        """A new, empty database of this server (dropped first if it exists); its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://sidecar@127.0.0.1:{self.port}/{name}"

    def _run(self, *argv: str, timeout: float = 60, check: bool = True):
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=check, cwd=self.root
        )

    def _initdb(self) -> None:
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "sidecar",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            raise PostgresError(f"initdb failed:\n{exc.stdout}\n{exc.stderr}") from None
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                # fsync off: a test cluster never outlives its machine. Commits stay
                # synchronous: a server killed mid-test must keep every committed job.
                "fsync = off\n"
                "max_connections = 200\n"
            )

    def start(self, timeout: float = 60) -> PostgresProcess:
        result = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout)),
            "start", timeout=timeout + 10, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise PostgresError(f"pg_ctl start failed:\n{result.stderr}\n{self.log_tail()}")
        if not (self.data / "created").exists():
            self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", "sidecar",
                      "sidecar")  # fmt: skip
            (self.data / "created").touch()
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate` is a crash: no checkpoint, clients cut at once)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except (FileNotFoundError, PermissionError):
            return "(no log)"

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def wait_until_accepting(url: str, timeout: float = 30) -> None:
    """Block until the server takes connections again (after a restart)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def empty_database(url: str) -> None:
    """Drop everything in the database (a fresh schema for the next test)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
