"""The sidecar's one configuration object, built from the environment inside the app factory.

Every setting is declared once, with its default and help text, in api/settings.py (the
server's), api/cluster_settings.py and api/delivery_settings.py; SETTINGS is all of them, and
the README's configuration table is checked against it by tests/unit/test_config.py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from api.cluster_settings import CLUSTER
from api.delivery_settings import DELIVERY
from api.exceptions import ConfigError
from api.settings import SERVER, Setting

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
SETTINGS: tuple[Setting, ...] = (*SERVER, *CLUSTER, *DELIVERY)


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
    user_workflows_path: str
    default_workflow: str
    job_store_url: str
    node_id: str
    node_url: str
    comfyui_max_pending: int
    lease_seconds: float
    outputs_shared: bool
    comfyui_connect_timeout: float
    comfyui_read_timeout: float
    reconcile_interval: float
    lost_job_grace: float
    tracker_enabled: bool
    log_level: str
    trust_proxy_hops: int
    accel_redirect_prefix: str
    max_request_mb: float
    api_keys: str
    allow_unauthenticated: bool
    rate_limit: str
    rate_limit_generate: str
    cors_origins: str
    max_watchers: int
    resubmit_lost_jobs: bool
    job_timeout_minutes: float
    max_unfinished_jobs: int
    max_unfinished_jobs_per_key: int
    job_retention_days: float
    purge_files: bool
    output_subfolder: str
    long_poll_max: float
    status_cache_seconds: float
    status_docs_dir: str
    image_url_secret: str
    image_url_seconds: float
    access_log: bool
    max_watchers_per_key: int
    stream_max_seconds: float
    allowed_hosts: str
    auth_failure_limit: str
    catalog_refresh_interval: float
    default_loras: tuple
    raw_graphs_enabled: bool
    upscale_model: str
    max_upload_mb: float
    catalog_max_age: float
    webhook_url: str
    webhook_secret: str
    webhook_events: tuple
    webhook_progress_interval: float
    webhook_timeout: float
    webhook_allowed_hosts: str
    delivery_retry_base: float
    delivery_retry_max_delay: float
    delivery_retry_hours: float
    s3_bucket: str
    s3_endpoint_url: str
    s3_prefix: str
    s3_region: str
    s3_url_ttl: float
    s3_public_base_url: str
    s3_delete_local: bool
    prometheus_multiproc_dir: str
    max_batch_size: int
    idle_unload_minutes: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def comfyui_url(self) -> str:
        return f"http://{self.comfyui_host}:{self.comfyui_port}"

    @property
    def comfyui_timeout(self) -> tuple[float, float]:
        return (self.comfyui_connect_timeout, self.comfyui_read_timeout)

    @property
    def loopback_only(self) -> bool:
        """No API keys and no ALLOW_UNAUTHENTICATED: only this machine may use the API."""
        return not self.api_keys.strip() and not self.allow_unauthenticated

    @property
    def bind_host(self) -> str:
        """Where to listen: API_HOST, or loopback when nothing would protect the API."""
        return "127.0.0.1" if self.loopback_only else self.api_host

    @property
    def workflow_dirs(self) -> list[Path]:
        """The shipped templates, then the operator's own folder (which wins on a name)."""
        extra = [Path(self.user_workflows_path)] if self.user_workflows_path else []
        return [self.workflows_dir, *extra]

    @property
    def database_path(self) -> Path:
        """The embedded store's file (JOB_STORE_URL=sqlite:///<path>, else in STATE_DIR)."""
        if self.job_store_url.startswith("sqlite:///"):
            return Path(self.job_store_url[len("sqlite:///") :])
        return self.state_dir / "jobs.sqlite3"

    @property
    def tracker_key(self) -> str:
        """Where the tracker's heartbeat is kept (per node when the store is shared)."""
        return f"tracker:{self.node_id}" if self.clustered else "tracker"

    @property
    def clustered(self) -> bool:
        """True with a store every node shares (PostgreSQL)."""
        return self.job_store_url.startswith(("postgresql://", "postgres://"))

    @property
    def workflow_settings(self) -> dict[str, Any]:
        """Settings a workflow manifest may take a parameter's default from ("setting")."""
        return {"UPSCALE_MODEL": self.upscale_model}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read every setting from `environ` (default os.environ); keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = env.get(setting.env)
            if raw == "" and setting.empty_means_off:
                values[setting.key] = ""  # set but empty: "off" for RATE_LIMIT and the like
                continue
            if raw is None or raw == "":
                continue
            try:
                values[setting.key] = setting.parse(raw)
            except (ValueError, TypeError) as exc:
                # A secret's value is never echoed: the message goes to logs.
                shown = "<hidden>" if setting.env.endswith("_SECRET") else repr(raw)
                raise ConfigError(f"{setting.env}={shown}: {exc}") from None
        for setting in SETTINGS:
            if setting.key in values or setting.default.startswith(("$", "./", "(")):
                continue
            if setting.default == "":
                values[setting.key] = setting.parse("")
                continue
            values[setting.key] = setting.parse(setting.default)
        workspace = values["workspace_path"]
        values.setdefault("comfyui_output_dir", workspace / "ComfyUI" / "output")
        values.setdefault("state_dir", workspace / "sidecar")
        values.setdefault("workflows_dir", PACKAGE_ROOT / "workflows")
        values.setdefault(
            "node_id",
            f"{socket.gethostname()}-{values['comfyui_host']}-{values['comfyui_port']}",
        )
        values.update(overrides)
        if values.get("webhook_url") and not values.get("webhook_secret"):
            raise ConfigError(
                "WEBHOOK_URL is set but WEBHOOK_SECRET is not: webhooks are always signed"
                " (docs/integrations.md shows how to make a secret)"
            )
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown settings: {sorted(unknown)}")
        return cls(**values)
