"""The sidecar's one configuration object, built from the environment inside the app factory.

Every setting is declared once in SETTINGS with its default and help text; the README's
configuration table is checked against this list by tests/unit/test_config.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """An environment variable has a value the sidecar cannot use."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError(f"must be > 0, got {raw!r}")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError(f"not a TCP port: {raw!r}")
    return value


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, default (as written in the docs), parser and help."""

    env: str
    default: str
    parse: Callable[[str], Any]
    help: str
    attr: str = ""

    @property
    def key(self) -> str:
        return self.attr or self.env.lower()


# Defaults written as strings exactly as the README shows them. "(derived)" defaults are
# computed from other settings in Config.from_env.
SETTINGS: tuple[Setting, ...] = (
    Setting("COMFYUI_HOST", "localhost", str, "Host name of the ComfyUI server."),
    Setting("COMFYUI_PORT", "8188", _port, "Port of the ComfyUI server."),
    Setting("API_HOST", "0.0.0.0", str, "Address the sidecar listens on."),
    Setting("API_PORT", "5000", _port, "Port the sidecar listens on."),
    Setting(
        "WORKSPACE_PATH",
        "/workspace",
        Path,
        "The volume shared with ComfyUI; the other paths default to places inside it.",
    ),
    Setting("DEBUG", "false", _bool, "Verbose logging and Flask debug mode (never in production)."),
    Setting(
        "COMFYUI_OUTPUT_DIR",
        "$WORKSPACE_PATH/ComfyUI/output",
        Path,
        "ComfyUI's output directory as the sidecar sees it; images are served from here.",
    ),
    Setting(
        "STATE_DIR",
        "$WORKSPACE_PATH/sidecar",
        Path,
        "Where the job database (jobs.sqlite3) and the tracker lock live. Keep it on a volume.",
    ),
    Setting(
        "WORKFLOWS_DIR",
        "./workflows (shipped templates)",
        Path,
        "Directory of workflow templates: <name>.json (API format) + <name>.manifest.json.",
    ),
    Setting(
        "DEFAULT_WORKFLOW",
        "flux2_turbo_default",
        str,
        "Workflow used when a request names none.",
    ),
    Setting(
        "COMFYUI_CONNECT_TIMEOUT",
        "3",
        _positive_float,
        "Seconds to wait for a TCP connection to ComfyUI.",
    ),
    Setting(
        "COMFYUI_READ_TIMEOUT",
        "30",
        _positive_float,
        "Seconds to wait for ComfyUI to answer one HTTP call.",
    ),
    Setting(
        "RECONCILE_INTERVAL",
        "2",
        _positive_float,
        "Seconds between checks of every unfinished job against ComfyUI's /queue and /history.",
    ),
    Setting(
        "LOST_JOB_GRACE",
        "10",
        _positive_float,
        "Seconds a submitted job may be missing from both /queue and /history before it is "
        "declared lost (ComfyUI restarted) and ends failed.",
    ),
    Setting(
        "TRACKER_ENABLED",
        "true",
        _bool,
        "Run the job tracker in this process (one per deployment is elected by a file lock).",
    ),
    Setting("LOG_LEVEL", "info", str, "Log level of the sidecar (debug, info, warning, error)."),
    Setting(
        "TRUST_PROXY_HOPS",
        "0",
        int,
        "Number of reverse proxies in front of the sidecar whose X-Forwarded-* headers are "
        "trusted (1 behind the shipped nginx). 0 ignores them.",
    ),
    Setting(
        "ACCEL_REDIRECT_PREFIX",
        "",
        str,
        "When set (e.g. /_outputs/, behind the shipped nginx), image responses to requests "
        "that came through nginx (header X-Sidecar-Via: nginx) carry an X-Accel-Redirect to "
        "this internal location instead of the bytes, so nginx sends the file.",
    ),
    Setting(
        "MAX_WATCHERS",
        "12",
        int,
        "Event streams, long polls and progress WebSockets one gunicorn worker holds open at "
        "once (each uses a worker thread; keep it below GUNICORN_THREADS). Past it: 429 with "
        "Retry-After.",
    ),
    Setting(
        "LONG_POLL_MAX",
        "60",
        _positive_float,
        "Longest wait, in seconds, that GET /api/status/<job_id>?wait= accepts.",
    ),
    Setting(
        "MAX_REQUEST_MB",
        "50",
        _positive_float,
        "Largest request body accepted, in MB (uploads included); larger ones get 413.",
    ),
)


@dataclass(frozen=True)
class Config:
    """Typed settings; build with Config.from_env()."""

    comfyui_host: str
    comfyui_port: int
    api_host: str
    api_port: int
    workspace_path: Path
    debug: bool
    comfyui_output_dir: Path
    state_dir: Path
    workflows_dir: Path
    default_workflow: str
    comfyui_connect_timeout: float
    comfyui_read_timeout: float
    reconcile_interval: float
    lost_job_grace: float
    tracker_enabled: bool
    log_level: str
    trust_proxy_hops: int
    accel_redirect_prefix: str
    max_request_mb: float
    max_watchers: int
    long_poll_max: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def comfyui_url(self) -> str:
        return f"http://{self.comfyui_host}:{self.comfyui_port}"

    @property
    def comfyui_timeout(self) -> tuple[float, float]:
        return (self.comfyui_connect_timeout, self.comfyui_read_timeout)

    @property
    def database_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read every setting from `environ` (default os.environ); keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = env.get(setting.env)
            if raw is None or raw == "":
                continue
            try:
                values[setting.key] = setting.parse(raw)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{setting.env}={raw!r}: {exc}") from None
        for setting in SETTINGS:
            if setting.key in values or setting.default.startswith(("$", "./")):
                continue
            if setting.default == "":
                values[setting.key] = ""
                continue
            values[setting.key] = setting.parse(setting.default)
        workspace = values["workspace_path"]
        values.setdefault("comfyui_output_dir", workspace / "ComfyUI" / "output")
        values.setdefault("state_dir", workspace / "sidecar")
        values.setdefault("workflows_dir", PACKAGE_ROOT / "workflows")
        values.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown settings: {sorted(unknown)}")
        return cls(**values)
