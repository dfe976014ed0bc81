"""The settings of result delivery and its neighbours: webhooks, uploads to object storage,
metrics, batches and unloading idle models (docs/integrations.md)."""

from __future__ import annotations

import base64
import binascii

from api.settings import Setting, boolean, non_negative_float, positive_float

# The events a webhook can subscribe to; job.progress is opt-in (and throttled).
WEBHOOK_EVENTS = ("job.completed", "job.failed", "job.cancelled", "job.progress")


def webhook_secret(raw: str) -> str:
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


def event_list(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(e.strip() for e in raw.split(",") if e.strip()))
    unknown = [name for name in names if name not in WEBHOOK_EVENTS]
    if unknown:
        raise ValueError(f"unknown event {unknown[0]!r} (events: {', '.join(WEBHOOK_EVENTS)})")
    return names


def url_or_empty(raw: str) -> str:
    if raw and not raw.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return raw


DELIVERY: tuple[Setting, ...] = (
    Setting(
        "WEBHOOK_URL",
        "",
        url_or_empty,
        "Webhook target for every job whose request names none (webhook_url); needs "
        "WEBHOOK_SECRET. Empty: only requests that name one get webhooks.",
    ),
    Setting(
        "WEBHOOK_SECRET",
        "",
        webhook_secret,
        "Signing secret of the webhooks (Standard Webhooks: whsec_ + base64 of 24 or more "
        "random bytes). Without it, requests that name a webhook_url are refused.",
    ),
    Setting(
        "WEBHOOK_EVENTS",
        "job.completed,job.failed,job.cancelled",
        event_list,
        "Events sent when a request does not list its own webhook_events; add job.progress "
        "for throttled progress events.",
    ),
    Setting(
        "WEBHOOK_PROGRESS_INTERVAL",
        "5",
        positive_float,
        "Least seconds between two job.progress events of one job.",
    ),
    Setting(
        "WEBHOOK_TIMEOUT",
        "10",
        positive_float,
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
        positive_float,
        "Seconds before the first retry of a failed webhook or upload; each retry waits twice "
        "as long as the one before (with jitter), up to DELIVERY_RETRY_MAX_DELAY.",
    ),
    Setting(
        "DELIVERY_RETRY_MAX_DELAY",
        "3600",
        positive_float,
        "Longest wait, in seconds, between two attempts of one delivery.",
    ),
    Setting(
        "DELIVERY_RETRY_HOURS",
        "24",
        positive_float,
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
        url_or_empty,
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
        positive_float,
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
        boolean,
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
        non_negative_float,
        "After this many minutes with no job running or waiting (in the sidecar and in "
        "ComfyUI's queue), ask ComfyUI once to unload its models and free memory (POST /free). "
        "Empty or 0: never.",
    ),
)
