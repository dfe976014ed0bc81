"""The sidecar's one configuration object, built from the environment inside the app factory.

Every setting is declared once in SETTINGS with its default and help text; the README's
configuration table is checked against this list by tests/unit/test_config.py.
"""

from __future__ import annotations

import base64
import binascii
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from api.exceptions import ConfigError, LoraSpecError
from api.graphs.loras import parse_list

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# The events a webhook can subscribe to; job.progress is opt-in (and throttled).
WEBHOOK_EVENTS = ("job.completed", "job.failed", "job.cancelled", "job.progress")


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


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError(f"must be >= 0, got {raw!r}")
    return value


def _default_loras(raw: str) -> tuple:
    try:
        return parse_list(raw, source="default")
    except LoraSpecError as exc:
        raise ValueError(exc.message) from None


def _store_url(raw: str) -> str:
    if raw and not raw.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ValueError("expected sqlite:///<path> or postgresql://user:password@host/db")
    return raw


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"must be > 0, got {raw!r}")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError(f"not a TCP port: {raw!r}")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw or 0)
    if value < 0:
        raise ValueError(f"must be >= 0, got {raw!r}")
    return value


def _webhook_secret(raw: str) -> str:
    """A Standard Webhooks secret: whsec_ + base64 of at least 24 random bytes."""
    if not raw:
        return ""
    if not raw.startswith("whsec_"):
        raise ValueError("must look like whsec_<base64> (see docs/integrations.md)")
    try:
        key = base64.b64decode(raw[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not base64") from None
    if len(key) < 24:
        raise ValueError(f"the key is {len(key)} bytes; use at least 24")
    return raw


def _event_list(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(e.strip() for e in raw.split(",") if e.strip()))
    unknown = [name for name in names if name not in WEBHOOK_EVENTS]
    if unknown:
        raise ValueError(f"unknown event {unknown[0]!r} (events: {', '.join(WEBHOOK_EVENTS)})")
    return names


def _url_or_empty(raw: str) -> str:
    if raw and not raw.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return raw


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, default (as written in the docs), parser and help."""

    env: str
    default: str
    parse: Callable[[str], Any]
    help: str
    attr: str = ""
    empty_means_off: bool = False  # VAR= (set, empty) switches it off instead of the default

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
        "USER_WORKFLOWS_PATH",
        "",
        str,
        "A second folder of workflows, read beside WORKFLOWS_DIR (the compose stack mounts the "
        "host's USER_WORKFLOWS_DIR here). A workflow in it replaces a shipped one of the same "
        "name. Files dropped in are picked up without a restart. Empty: none.",
    ),
    Setting(
        "DEFAULT_WORKFLOW",
        "flux2_turbo_default",
        str,
        "Workflow used when a request names none.",
    ),
    Setting(
        "JOB_STORE_URL",
        "",
        _store_url,
        "Where jobs are kept. Empty or sqlite:///<path>: the embedded SQLite store (in "
        "STATE_DIR by default; one node). postgresql://user:password@host/db: a store shared "
        "by every node of a cluster (docs/scaling.md).",
    ),
    Setting(
        "NODE_ID",
        "(host name and ComfyUI address)",
        str,
        "This node's name in a cluster; keep it stable across restarts (a node that comes back "
        "under its name takes up the jobs it still holds).",
    ),
    Setting(
        "NODE_URL",
        "",
        str,
        "How the other nodes of a cluster reach this node's API (e.g. http://gpu1:5000), to "
        "fetch images from it when the nodes share neither object storage nor an output "
        "folder.",
    ),
    Setting(
        "COMFYUI_MAX_PENDING",
        "2",
        _positive_int,
        "In a cluster: most jobs this node keeps in its ComfyUI at once (running + waiting); "
        "the rest wait in the shared queue for whichever node has room first.",
    ),
    Setting(
        "LEASE_SECONDS",
        "30",
        _positive_float,
        "In a cluster: how long a node holds a job without renewing its lease (it renews every "
        "third of this); a node silent for longer loses its jobs to the others.",
    ),
    Setting(
        "OUTPUTS_SHARED",
        "false",
        _bool,
        "In a cluster: every node sees every node's images in COMFYUI_OUTPUT_DIR (a shared "
        "file system), so any node serves any image from its own folder.",
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
        "Run the job tracker (one per deployment is elected by a file lock) and the "
        "webhook/upload senders in this process.",
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
        "RESUBMIT_LOST_JOBS",
        "true",
        _bool,
        "When ComfyUI restarts and loses jobs that had not started, queue them again from the "
        "stored graphs (false: they end failed, saying so). Running jobs always end failed.",
    ),
    Setting(
        "JOB_TIMEOUT_MINUTES",
        "60",
        _positive_float,
        "Deadline of a job, from its creation; past it the job is cancelled in ComfyUI and "
        'ends failed ("timed out"). Requests may set a shorter timeout_minutes, never a '
        "longer one (400).",
    ),
    Setting(
        "MAX_UNFINISHED_JOBS",
        "500",
        int,
        "Most queued+processing jobs at once; past it POST /api/generate answers 429 with "
        "Retry-After.",
    ),
    Setting(
        "MAX_UNFINISHED_JOBS_PER_KEY",
        "100",
        int,
        "Most queued+processing jobs one API key may have at once (429 with Retry-After past "
        "it), so one key cannot fill the queue for the others. Not used without API_KEYS.",
    ),
    Setting(
        "JOB_RETENTION_DAYS",
        "30",
        _positive_float,
        "Finished jobs older than this are deleted from the job database.",
    ),
    Setting(
        "PURGE_FILES",
        "false",
        _bool,
        "Also delete the image files of jobs removed by JOB_RETENTION_DAYS.",
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
        "MAX_WATCHERS_PER_KEY",
        "4",
        int,
        "Of MAX_WATCHERS, how many one API key may hold in one worker, so one key cannot take "
        "every slot. Not used without API_KEYS.",
    ),
    Setting(
        "STREAM_MAX_SECONDS",
        "3600",
        _positive_float,
        "Longest life of one event stream or progress WebSocket; then it ends (event: expired, "
        "or close code 1001) and the client reconnects to follow on.",
    ),
    Setting(
        "LONG_POLL_MAX",
        "60",
        _positive_float,
        "Longest wait, in seconds, that GET /api/status/<job_id>?wait= accepts.",
    ),
    Setting(
        "API_KEYS",
        "",
        str,
        "API keys, comma- or newline-separated, each <name>:<key>:<scope>, <key>:<scope> or "
        "<key> (admin), with scope read, generate or admin. Keys are at least 16 characters; "
        "a key's jobs are its own (admin keys see all). Empty: no auth, the sidecar binds to "
        "127.0.0.1 unless ALLOW_UNAUTHENTICATED=true, and answers only this machine.",
    ),
    Setting(
        "ALLOW_UNAUTHENTICATED",
        "false",
        _bool,
        "With no API_KEYS, listen on API_HOST anyway (e.g. on a private network behind an "
        "authenticating proxy). Without it, no keys means loopback only.",
    ),
    Setting(
        "ALLOWED_HOSTS",
        "",
        str,
        "Host names (comma-separated; .example.com for it and its subdomains) the API answers "
        "to, besides localhost and loopback addresses. Without API_KEYS other names are "
        "refused (DNS rebinding); with keys or ALLOW_UNAUTHENTICATED, only checked when set.",
    ),
    Setting(
        "AUTH_FAILURE_LIMIT",
        "20/minute",
        str,
        "Wrong API keys one client address may send, per gunicorn worker; past it every request "
        "with a key from that address gets 429 until the window passes. Empty: no limit.",
        empty_means_off=True,
    ),
    Setting(
        "RATE_LIMIT",
        "1200/minute",
        str,
        "Requests per API key (or client address without keys), per gunicorn worker; "
        "answered with X-RateLimit-* headers, 429 past it. Empty: no limit.",
        empty_means_off=True,
    ),
    Setting(
        "RATE_LIMIT_GENERATE",
        "120/minute",
        str,
        "Limit for POST /api/generate on top of RATE_LIMIT. Empty: no extra limit.",
        empty_means_off=True,
    ),
    Setting(
        "CORS_ORIGINS",
        "",
        str,
        "Origins allowed to call the API from a browser, comma-separated (e.g. "
        "https://app.example.com). Empty: no CORS headers (same-origin only).",
    ),
    Setting(
        "MAX_REQUEST_MB",
        "50",
        _positive_float,
        "Largest request body accepted, in MB (uploads included); larger ones get 413.",
    ),
    Setting(
        "DEFAULT_LORAS",
        "",
        _default_loras,
        "LoRAs chained into every job of a workflow that takes LoRAs, comma- or "
        "newline-separated, each name[:strength_model[:strength_clip]] (strength 1.0 when "
        "left out). A request's `loras` entry of the same name replaces the default.",
    ),
    Setting(
        "RAW_GRAPHS_ENABLED",
        "false",
        _bool,
        "Accept POST /api/workflows/execute (any API-format graph). Off by default: a raw "
        "graph can run every node installed in ComfyUI. When on, it needs an admin key.",
    ),
    Setting(
        "UPSCALE_MODEL",
        "",
        str,
        "Upscale model file (in models/upscale_models/) used by flux2_turbo_upscale when a "
        "request names none; empty keeps the template's own (RealESRGAN_x4plus.pth).",
    ),
    Setting(
        "MAX_UPLOAD_MB",
        "20",
        _positive_float,
        "Largest image accepted by POST /api/upload, in MB (MAX_REQUEST_MB caps it too).",
    ),
    Setting(
        "CATALOG_MAX_AGE",
        "60",
        _positive_float,
        "Seconds ComfyUI's /object_info (node types, model files, LoRAs, samplers) is reused "
        "before it is fetched again; a name missing from it triggers one fresh fetch.",
    ),
    Setting(
        "CATALOG_REFRESH_INTERVAL",
        "10",
        _non_negative_float,
        "Fewest seconds between two fetches of /object_info: a name missing from the cached "
        "copy waits for this before it forces a fresh one (one at a time), so made-up names "
        "cannot make every request fetch it.",
    ),
    Setting(
        "WEBHOOK_URL",
        "",
        _url_or_empty,
        "Webhook target for every job whose request names none (webhook_url); needs "
        "WEBHOOK_SECRET. Empty: only requests that name one get webhooks.",
    ),
    Setting(
        "WEBHOOK_SECRET",
        "",
        _webhook_secret,
        "Signing secret of the webhooks (Standard Webhooks: whsec_ + base64 of 24 or more "
        "random bytes). Without it, requests that name a webhook_url are refused.",
    ),
    Setting(
        "WEBHOOK_EVENTS",
        "job.completed,job.failed,job.cancelled",
        _event_list,
        "Events sent when a request does not list its own webhook_events; add job.progress "
        "for throttled progress events.",
    ),
    Setting(
        "WEBHOOK_PROGRESS_INTERVAL",
        "5",
        _positive_float,
        "Least seconds between two job.progress events of one job.",
    ),
    Setting(
        "WEBHOOK_TIMEOUT",
        "10",
        _positive_float,
        "Seconds one webhook attempt may take (connect and answer) before it counts as failed.",
    ),
    Setting(
        "WEBHOOK_ALLOWED_HOSTS",
        "",
        str,
        "Webhook targets allowed although they resolve to loopback, private, link-local or "
        "other non-public addresses (refused by default): host names and CIDR ranges, "
        "comma-separated (e.g. receiver.internal,10.0.5.0/24).",
    ),
    Setting(
        "DELIVERY_RETRY_BASE",
        "5",
        _positive_float,
        "Seconds before the first retry of a failed webhook or upload; each retry waits twice "
        "as long as the one before (with jitter), up to DELIVERY_RETRY_MAX_DELAY.",
    ),
    Setting(
        "DELIVERY_RETRY_MAX_DELAY",
        "3600",
        _positive_float,
        "Longest wait, in seconds, between two attempts of one delivery.",
    ),
    Setting(
        "DELIVERY_RETRY_HOURS",
        "24",
        _positive_float,
        "Hours a webhook or upload is retried before it is given up (then it shows as failed "
        "in GET /api/jobs/<id>/deliveries and can be redelivered).",
    ),
    Setting(
        "S3_BUCKET",
        "",
        str,
        "Upload every output image to this S3 bucket (S3, MinIO, R2...) after the job "
        "completes; credentials the usual AWS way (AWS_ACCESS_KEY_ID...). Empty: no uploads.",
    ),
    Setting(
        "S3_ENDPOINT_URL",
        "",
        _url_or_empty,
        "The S3 API's address for non-AWS storage (e.g. http://minio:9000). Empty: AWS.",
    ),
    Setting(
        "S3_PREFIX",
        "",
        str,
        "Prefix of every object key (keys are <prefix><job_id>/<file name>).",
    ),
    Setting("S3_REGION", "", str, "The bucket's region. Empty: boto3's own default."),
    Setting(
        "S3_URL_TTL",
        "3600",
        _positive_float,
        "Seconds the presigned URLs in a job's output_urls stay valid.",
    ),
    Setting(
        "S3_PUBLIC_BASE_URL",
        "",
        str,
        "When set (a CDN or a public bucket), output_urls are <this>/<key> instead of "
        "presigned URLs.",
    ),
    Setting(
        "S3_DELETE_LOCAL",
        "false",
        _bool,
        "Delete an image from the output folder once it is uploaded; the API then serves it "
        "from the bucket.",
    ),
    Setting(
        "PROMETHEUS_MULTIPROC_DIR",
        "",
        str,
        "Folder where gunicorn's workers keep their metrics for GET /metrics (prometheus_client"
        "'s multiprocess mode). gunicorn.conf.py empties it at start, or makes a temporary one "
        "when unset.",
    ),
    Setting(
        "MAX_BATCH_SIZE",
        "100",
        int,
        "Most jobs one POST /api/batch may hold.",
    ),
    Setting(
        "IDLE_UNLOAD_MINUTES",
        "",
        _non_negative_float,
        "After this many minutes with no job running or waiting (in the sidecar and in "
        "ComfyUI's queue), ask ComfyUI once to unload its models and free memory (POST /free). "
        "Empty or 0: never.",
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
    long_poll_max: float
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
                raise ConfigError(f"{setting.env}={raw!r}: {exc}") from None
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
