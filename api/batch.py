"""A batch: several jobs submitted by one POST /api/batch, followed and fetched together.

The batch row only names its jobs (in submission order); everything about each job stays in
the job's own row. `aggregate()` is GET /api/batch/<batch_id>: counts per status, overall
progress and each job's short status, with one overall `status` word that scripts can loop on
the way they loop on a job's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from api.job import FINISHED, SUMMARY_SCHEMA, Job, JobStatus, iso
from api.schemas import BOOLEAN, INTEGER, STRING, TIMESTAMP, array, nullable, obj


@dataclass
class Batch:
    """One batch as stored."""

    id: str
    job_ids: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    request_hash: str | None = None
    created_at: float = 0.0
    owner: str | None = None  # the API key's name, as for jobs

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Batch:
        return cls(
            id=row["id"],
            job_ids=list(row.get("job_ids") or []),
            idempotency_key=row.get("idempotency_key"),
            request_hash=row.get("request_hash"),
            created_at=row["created_at"],
            owner=row.get("owner"),
        )


def overall_status(jobs: list[Job]) -> str:
    """One status word for the batch, in the jobs' vocabulary: queued or processing while a job
    is unfinished; then completed (every job completed), failed (one failed) or cancelled."""
    statuses = {job.status for job in jobs}
    if not statuses.issubset(FINISHED):
        return "queued" if statuses == {JobStatus.QUEUED} else "processing"
    if statuses == {JobStatus.COMPLETED}:
        return "completed"
    return "failed" if JobStatus.FAILED in statuses else "cancelled"


def aggregate(batch: Batch, jobs: list[Job], image_url: Callable[[dict], str]) -> dict:
    """GET /api/batch/<batch_id>."""
    counts = Counter(job.status.value for job in jobs)
    return {
        "batch_id": batch.id,
        "status": overall_status(jobs),
        "finished": all(job.finished for job in jobs),
        "total": len(jobs),
        "counts": {status.value: counts.get(status.value, 0) for status in JobStatus},
        "progress": round(sum(job.progress for job in jobs) / len(jobs), 4) if jobs else 1.0,
        "images": sum(len(job.outputs) for job in jobs if job.status == JobStatus.COMPLETED),
        "created_at": iso(batch.created_at),
        "jobs": [job.to_summary(image_url) for job in jobs],
        "archive_url": f"/api/batch/{batch.id}/archive",
    }


BATCH_STATUS_WORD = {"enum": ["queued", "processing", "completed", "failed", "cancelled"]}
BATCH_SCHEMA = obj(
    {
        "batch_id": STRING,
        "status": BATCH_STATUS_WORD,
        "finished": BOOLEAN,
        "total": INTEGER,
        "counts": {"type": "object", "additionalProperties": INTEGER},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "images": INTEGER,
        "created_at": TIMESTAMP,
        "jobs": array(SUMMARY_SCHEMA),
        "archive_url": STRING,
    },
    description="A batch: `status` is queued/processing until every job is final, then "
    "completed (all completed), failed (one failed) or cancelled.",
)
BATCH_ACCEPTED_SCHEMA = obj(
    {
        "batch_id": STRING,
        "status": BATCH_STATUS_WORD,
        "job_ids": array(STRING),
        "total": INTEGER,
        "message": STRING,
        "status_url": STRING,
        "archive_url": STRING,
        "replayed": BOOLEAN,
        "webhook_url": nullable(STRING),
    },
    optional=("replayed", "webhook_url"),
)
