"""The environment variables the sidecar reads, declared once: name, default (as the README
writes it), parser and help. This module holds the parsers and the server's own settings;
api/cluster_settings.py and api/delivery_settings.py hold those of a cluster and of result
delivery, and api/config.py builds the one Config object from all of them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api import image_links
from api.exceptions import LoraSpecError
from api.graphs.loras import parse_list


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError(f"must be > 0, got {raw!r}")
    return value


def non_negative_float(raw: str) -> float:
    value = float(raw or 0)
    if value < 0:
        raise ValueError(f"must be >= 0, got {raw!r}")
    return value


def positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"must be > 0, got {raw!r}")
    return value


def port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError(f"not a TCP port: {raw!r}")
    return value


# A folder pattern: strftime directives and plain names, relative, nothing that climbs out.
_FOLDER_PATTERN = re.compile(r"[A-Za-z0-9._%-]+(/[A-Za-z0-9._%-]+)*")


def folder_pattern(raw: str) -> str:
    """A relative folder of the output folder, as a time.strftime pattern ("" for none)."""
    value = raw.strip()
    if not value:
        return ""
    # Checked as written and as a date renders it (%c or %X would put in spaces and colons).
    for text in (value, time.strftime(value, time.gmtime())):
        if not _FOLDER_PATTERN.fullmatch(text) or any(
            part in (".", "..") for part in text.split("/")
        ):
            raise ValueError(
                "expected a relative folder of letters, digits, . _ - and strftime directives"
                f" (e.g. %Y-%m-%d), got {raw!r}"
            )
    return value


def default_loras(raw: str) -> tuple:
    try:
        return parse_list(raw, source="default")
    except LoraSpecError as exc:
        raise ValueError(exc.message) from None


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
SERVER: tuple[Setting, ...] = (
    Setting("COMFYUI_HOST", "localhost", str, "Host name of the ComfyUI server."),
    Setting("COMFYUI_PORT", "8188", port, "Port of the ComfyUI server."),
    Setting("API_HOST", "0.0.0.0", str, "Address the sidecar listens on."),
    Setting("API_PORT", "5000", port, "Port the sidecar listens on."),
    Setting(
        "WORKSPACE_PATH",
        "/workspace",
        Path,
        "The volume shared with ComfyUI; the other paths default to places inside it.",
    ),
    Setting(
        "DEBUG", "false", boolean, "Verbose logging and Flask debug mode (never in production)."
    ),
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
        "COMFYUI_CONNECT_TIMEOUT",
        "3",
        positive_float,
        "Seconds to wait for a TCP connection to ComfyUI.",
    ),
    Setting(
        "COMFYUI_READ_TIMEOUT",
        "30",
        positive_float,
        "Seconds to wait for ComfyUI to answer one HTTP call.",
    ),
    Setting(
        "RECONCILE_INTERVAL",
        "2",
        positive_float,
        "Seconds between checks of every unfinished job (against ComfyUI's /queue and /history"
        " where its events do not already account for the job).",
    ),
    Setting(
        "LOST_JOB_GRACE",
        "10",
        positive_float,
        "Seconds a submitted job may be missing from both /queue and /history before it is "
        "declared lost (ComfyUI restarted) and ends failed.",
    ),
    Setting(
        "TRACKER_ENABLED",
        "true",
        boolean,
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
        boolean,
        "When ComfyUI restarts and loses jobs that had not started, queue them again from the "
        "stored graphs (false: they end failed, saying so). Running jobs always end failed.",
    ),
    Setting(
        "JOB_TIMEOUT_MINUTES",
        "60",
        positive_float,
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
        positive_float,
        "Finished jobs older than this are deleted from the job database.",
    ),
    Setting(
        "OUTPUT_SUBFOLDER",
        "",
        folder_pattern,
        "A folder of COMFYUI_OUTPUT_DIR for each job's images, as a strftime pattern in UTC "
        "(e.g. %Y-%m-%d: a folder a day). ComfyUI lists the whole folder it saves into on every "
        "save: 12 ms a job with 10,000 images there, 125 ms with 100,000 (docs/benchmarks.md). "
        "Image names (output_image) then start with the folder. Empty: where the workflow says.",
    ),
    Setting(
        "PURGE_FILES",
        "false",
        boolean,
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
        positive_float,
        "Longest life of one event stream or progress WebSocket; then it ends (event: expired, "
        "or close code 1001) and the client reconnects to follow on.",
    ),
    Setting(
        "LONG_POLL_MAX",
        "60",
        positive_float,
        "Longest wait, in seconds, that GET /api/status/<job_id>?wait= accepts.",
    ),
    Setting(
        "STATUS_CACHE_SECONDS",
        "30",
        non_negative_float,
        "How long a job status that can no longer change (final, its follow-ups recorded) may "
        "be answered from the shipped nginx's cache (X-Accel-Expires), per path, client "
        "address and API key; 0: never. A key removed from API_KEYS can read statuses it "
        "read before for at most this long.",
    ),
    Setting(
        "IMAGE_URL_SECRET",
        "",
        image_links.secret,
        "Signs the image URLs handed to keys that see only their own jobs (image_url, "
        "images[].url: ?expires=&signature=), so that the shipped nginx sends those images "
        "without asking the sidecar; whoever holds such a URL can read that one image until it "
        "expires, with or without a key. 32 or more letters, digits, '-' or '_', the same for "
        "nginx (docker-compose.yml passes it to both). Empty: off; every image is checked.",
    ),
    Setting(
        "IMAGE_URL_SECONDS",
        "3600",
        positive_float,
        "How long a signed image URL (IMAGE_URL_SECRET) stays valid: at least this long, at "
        "most a quarter longer (URLs signed within a quarter of it are the same). A status "
        "with such URLs is kept (STATUS_CACHE_SECONDS) for at most half of it.",
    ),
    Setting(
        "STATUS_DOCS_DIR",
        "",
        str,
        "A folder the shipped nginx reads: in a public deployment (no API_KEYS, "
        "ALLOW_UNAUTHENTICATED=true, no ALLOWED_HOSTS, one node) the sidecar keeps each recent "
        "job's status there as <job_id>.json, and nginx answers plain polls of GET "
        "/api/status/<job_id> from it without asking the sidecar. Empty: off.",
    ),
    Setting(
        "ACCESS_LOG",
        "true",
        boolean,
        "gunicorn writes a line per request to its log; docker-compose.yml turns it off, "
        "since the shipped nginx logs every request (with the same request id).",
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
        boolean,
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
        positive_float,
        "Largest request body accepted, in MB (uploads included); larger ones get 413.",
    ),
    Setting(
        "DEFAULT_LORAS",
        "",
        default_loras,
        "LoRAs chained into every job of a workflow that takes LoRAs, comma- or "
        "newline-separated, each name[:strength_model[:strength_clip]] (strength 1.0 when "
        "left out). A request's `loras` entry of the same name replaces the default.",
    ),
    Setting(
        "RAW_GRAPHS_ENABLED",
        "false",
        boolean,
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
        positive_float,
        "Largest image accepted by POST /api/upload, in MB (MAX_REQUEST_MB caps it too).",
    ),
    Setting(
        "CATALOG_MAX_AGE",
        "60",
        positive_float,
        "Seconds ComfyUI's /object_info (node types, model files, LoRAs, samplers) is reused "
        "before it is fetched again; a name missing from it triggers one fresh fetch.",
    ),
    Setting(
        "CATALOG_REFRESH_INTERVAL",
        "10",
        non_negative_float,
        "Fewest seconds between two fetches of /object_info: a name missing from the cached "
        "copy waits for this before it forces a fresh one (one at a time), so made-up names "
        "cannot make every request fetch it.",
    ),
)
