"""Run a real ComfyUI (CPU only, no model weights) for integration tests.

Typical use::

    python, comfy_dir = comfyui_env()          # builds/reuses the cached venv + checkout
    with ComfyUIProcess(python, comfy_dir, tmp_path / "comfy") as comfy:
        requests.get(comfy.url + "/system_stats")

Everything ComfyUI writes for a test lives under ``base_dir`` (input, output, temp, custom
nodes, model folders, log). Exceptions that ComfyUI itself imposes: the March-2024 server always
creates ``<comfy_dir>/user`` (it has no ``--user-directory``), and every server also scans
``<comfy_dir>/models`` and ``<comfy_dir>/custom_nodes`` — harmless while those hold no model files.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_NODES_FILE = REPO_ROOT / "tests" / "comfyui" / "sidecar_test_nodes.py"

# Model folders created (empty) under base_dir/models and registered via extra_model_paths.yaml.
# Both the current names and the legacy aliases are listed: the 2024 server only knows
# `clip`/`unet`, new servers map those onto `text_encoders`/`diffusion_models`.
MODEL_SUBFOLDERS = (
    "checkpoints",
    "diffusion_models",
    "text_encoders",
    "vae",
    "loras",
    "upscale_models",
    "clip",
    "unet",
)

# Flags that only newer ComfyUI versions accept (argparse exits on unknown flags, so each one
# is passed only when the checkout's comfy/cli_args.py declares it). --user-directory is not in
# the 2024 server either; on new servers it keeps user data out of the ComfyUI checkout.
_OPTIONAL_FLAGS = (
    ("--cache-none",),
    ("--database-url", "sqlite:///:memory:"),
    ("--disable-api-nodes",),
)

# An opener that ignores *_proxy environment variables: a readiness probe of 127.0.0.1 must
# never be sent to a corporate proxy.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ComfyUIError(RuntimeError):
    """ComfyUI failed to start (the message includes the tail of its log)."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (may be taken by someone else before use)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each is held until all are found (two calls of free_port()
    can return the same port, and an nginx given one port for two servers fails to start)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def comfyui_env(timeout: float = 1800.0) -> tuple[Path, Path]:
    """Prepare (or reuse) the test ComfyUI and return ``(python, comfy_dir)``.

    Runs ``scripts/comfyui-test-env.sh``, which honours ``COMFYUI_DIR`` and ``SIDECAR_CACHE``
    from the environment. The first run installs several GB and takes minutes; later runs only
    compare a stamp file and return at once.
    """
    script = REPO_ROOT / "scripts" / "comfyui-test-env.sh"
    proc = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise ComfyUIError(
            f"{script} failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    values = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("COMFYUI_PYTHON", "COMFYUI_DIR"):
            # The script prints the values with printf %q (shell quoting).
            values[key] = shlex.split(value)[0] if value else ""
    if set(values) != {"COMFYUI_PYTHON", "COMFYUI_DIR"}:
        raise ComfyUIError(f"unexpected output from {script}:\n{proc.stdout}")
    return Path(values["COMFYUI_PYTHON"]), Path(values["COMFYUI_DIR"])


class ComfyUIProcess:
    """A real ComfyUI server process bound to 127.0.0.1, confined to ``base_dir``.

    ``port=None`` picks a free port once, at construction, and keeps it across
    :meth:`restart` so that a sidecar configured with :attr:`url` can reconnect.
    """

    def __init__(
        self,
        python: str | os.PathLike[str],
        comfy_dir: str | os.PathLike[str],
        base_dir: Path,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        test_nodes: bool = True,
    ) -> None:
        self.python = str(python)
        # Without the test node, a ComfyUI that cannot run the sleep workflows (a cluster node
        # that lacks what another has).
        self.test_nodes = test_nodes
        # Another loopback address stands for a container's own address in tests/deploy.
        self.host = host
        self.comfy_dir = Path(comfy_dir).resolve()
        self.base_dir = Path(base_dir).resolve()
        self._auto_port = port is None
        self.port = free_port() if port is None else port
        self.extra_args = list(extra_args)
        self.log_path = self.base_dir / "comfyui.log"
        self.startup_seconds: float | None = None  # wall time of the last successful start()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = None
        self._log_offset = 0  # where the current run's output starts in comfyui.log

    # -- paths and URLs ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def custom_nodes_dir(self) -> Path:
        return self.base_dir / "custom_nodes"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 240.0) -> ComfyUIProcess:
        """Launch ComfyUI and block until it answers ``GET /system_stats``.

        Raises :class:`ComfyUIError` (with the log tail) if the process exits early, if it is
        not ready within ``timeout`` seconds (the process is then killed), or if the sidecar
        test node failed to load.
        """
        if self.is_running():
            raise ComfyUIError(f"ComfyUI is already running (pid {self._proc.pid})")
        self._prepare_base_dir()
        began = time.monotonic()
        try:
            self._launch()
            self._wait_ready(began + timeout)
        except ComfyUIError as exc:
            # An auto-picked port can be grabbed by another process between free_port() and
            # the bind; retry once on a fresh port in that case only.
            if not (self._auto_port and "already in use" in str(exc).lower()):
                raise
            self.port = free_port()
            self._launch()
            self._wait_ready(began + timeout)
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if ComfyUI has not exited after ``timeout`` seconds."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(timeout=10)
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL without warning (simulates a crash); the port is free again afterwards."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait(timeout=10)
        self._cleanup()

    def restart(self, timeout: float = 240.0) -> ComfyUIProcess:
        """Stop (if running) and start again on the same port; queue and history are lost."""
        self.stop()
        return self.start(timeout=timeout)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, max_lines: int = 60) -> str:
        """The last lines ComfyUI wrote during the current (or last) run."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except FileNotFoundError:
            return "(no log file)"
        lines = data.decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-max_lines:])

    def __enter__(self) -> ComfyUIProcess:
        return self.start() if not self.is_running() else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The argv used to launch ComfyUI (cwd = comfy_dir)."""
        base = self.base_dir
        argv = [
            self.python,
            "main.py",
            "--cpu",
            "--listen", self.host,
            "--port", str(self.port),
            "--output-directory", str(self.output_dir),
            "--input-directory", str(self.input_dir),
            # ComfyUI uses <dir>/temp and deletes it at startup and exit: keep it in base_dir.
            "--temp-directory", str(base),
            "--extra-model-paths-config", str(base / "extra_model_paths.yaml"),
            "--disable-auto-launch",
            "--dont-print-server",
        ]  # fmt: skip
        supported = self._supported_flags()
        for flag in _OPTIONAL_FLAGS:
            if flag[0] in supported:
                argv += flag
        if "--user-directory" in supported:
            argv += ["--user-directory", str(base / "user")]
        return argv + self.extra_args

    def _supported_flags(self) -> set[str]:
        # Reading the source is much cheaper than `main.py --help` (which imports torch).
        text = (self.comfy_dir / "comfy" / "cli_args.py").read_text(encoding="utf-8")
        candidates = [flag[0] for flag in _OPTIONAL_FLAGS] + ["--user-directory"]
        return {flag for flag in candidates if f'"{flag}"' in text or f"'{flag}'" in text}

    def _prepare_base_dir(self) -> None:
        folders = (self.input_dir, self.output_dir, self.custom_nodes_dir, self.base_dir / "user")
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        for name in MODEL_SUBFOLDERS:
            (self.models_dir / name).mkdir(parents=True, exist_ok=True)
        if self.test_nodes:
            shutil.copy2(TEST_NODES_FILE, self.custom_nodes_dir / TEST_NODES_FILE.name)
        # Both the 2024 loader (main.load_extra_path_config) and the new one
        # (utils/extra_config.py) read `base_path` plus `<folder name>: <relative path>` string
        # entries and call folder_paths.add_model_folder_path(); "custom_nodes" is just another
        # folder name, read by the custom-node loader afterwards. No `is_default` key: the
        # 2024 loader would treat it as a folder and crash on the boolean. Values are
        # JSON-quoted strings, which are valid YAML and survive odd characters in paths.
        lines = [
            "# Written by tests/support/comfyui.py for one test ComfyUI instance.",
            "comfy_sidecar_tests:",
            f"  base_path: {json.dumps(str(self.base_dir))}",
            f"  custom_nodes: {json.dumps('custom_nodes')}",
        ]
        lines += [f"  {name}: {json.dumps('models/' + name)}" for name in MODEL_SUBFOLDERS]
        (self.base_dir / "extra_model_paths.yaml").write_text("\n".join(lines) + "\n")

    def _launch(self) -> None:
        self._cleanup()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child
        self._log_offset = self._log_file.tell()
        argv = self.command()
        self._log_file.write(f"\n===== ComfyUIProcess: {shlex.join(argv)}\n".encode())
        self._log_file.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Keep bytecode out of the ComfyUI checkout (and its venv) when it is written at all.
        cache = Path(os.environ.get("SIDECAR_CACHE", Path.home() / ".cache" / "comfy-sidecar"))
        env.setdefault("PYTHONPYCACHEPREFIX", str(cache / "pycache"))
        self._proc = subprocess.Popen(
            argv,
            cwd=self.comfy_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            # Own process group: signals reach anything ComfyUI spawns, and a Ctrl-C aimed at
            # pytest does not kill ComfyUI behind the fixtures' back.
            start_new_session=True,
        )
        # Safety net for crashed test sessions: never leave a ComfyUI running after exit.
        atexit.register(self.kill)

    def _wait_ready(self, deadline: float) -> None:
        proc = self._proc
        assert proc is not None
        while True:
            code = proc.poll()
            if code is not None:
                self._cleanup()
                raise ComfyUIError(
                    f"ComfyUI exited with code {code} before it was ready "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            if self._http_json("/system_stats") is not None:
                break
            if time.monotonic() >= deadline:
                self.kill()
                raise ComfyUIError(
                    f"ComfyUI was not ready on {self.url} before the timeout "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            # Poll interval, not a synchronisation point: readiness is decided by the probe.
            time.sleep(0.25)
        # The HTTP socket only opens after all custom nodes were imported, so a missing node
        # here means the import failed (e.g. extra_model_paths.yaml not honoured).
        info = self._http_json("/object_info/SidecarSleepProgress")
        if self.test_nodes and not info:
            tail = self.log_tail()
            self.kill()
            raise ComfyUIError(f"SidecarSleepProgress did not load into ComfyUI:\n{tail}")

    def _http_json(self, path: str) -> object | None:
        try:
            with _NO_PROXY_OPENER.open(self.url + path, timeout=2) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        # start_new_session=True made the child a group leader: pgid == pid.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def _cleanup(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            atexit.unregister(self.kill)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
