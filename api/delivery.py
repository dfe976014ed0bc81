"""A delivery: one thing the sidecar owes the outside world about a job, kept in the job store's
outbox until it is done (a signed webhook event, or an output image uploaded to object storage).

Deliveries are written in the same store transaction that finishes their job (JobStore.finish),
so a crash between "the job ended" and "the receiver heard of it" loses nothing; the outbox
worker (api/outbox.py) sends them, with retries, from any process. `to_public()` is an entry of
GET /api/jobs/<job_id>/deliveries.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from api.job import iso
from api.schemas import INTEGER, STRING, TIMESTAMP, array, nullable, obj


class DeliveryKind(StrEnum):
    WEBHOOK = "webhook"
    UPLOAD = "upload"


class DeliveryState(StrEnum):
    PENDING = "pending"  # due at next_attempt_at (being attempted while leased)
    DELIVERED = "delivered"
    FAILED = "failed"  # given up: a 4xx, a refused target, or the retry window is over
    SUPERSEDED = "superseded"  # a job.progress event overtaken by a newer one or the end


PROGRESS_EVENT = "job.progress"
UPLOAD_EVENT = "upload"


def new_delivery_id() -> str:
    """A Standard Webhooks message id: the receiver deduplicates on it across retries."""
    return f"msg_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class NewDelivery:
    """A delivery to write into the outbox. `retry_for`: seconds it may be retried."""

    kind: DeliveryKind
    event: str
    target: str  # the webhook URL, or the object key of an upload
    retry_for: float
    payload: dict = field(default_factory=dict)  # an upload's image (filename, subfolder...)
    id: str = field(default_factory=new_delivery_id)


@dataclass
class Delivery:
    """One outbox row as stored."""

    id: str
    job_id: str
    kind: DeliveryKind
    event: str
    target: str
    payload: dict
    state: DeliveryState
    attempts: int
    created_at: float
    expires_at: float
    next_attempt_at: float | None = None
    last_attempt_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None
    lease_owner: str | None = None
    lease_until: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Delivery:
        values = {name: row[name] for name in FIELD_NAMES if name in row}
        values["kind"] = DeliveryKind(values["kind"])
        values["state"] = DeliveryState(values["state"])
        values["payload"] = values.get("payload") or {}
        return cls(**values)

    def to_public(self) -> dict:
        """An entry of GET /api/jobs/<job_id>/deliveries (a webhook's URL is shown without
        its query string, which may carry a token)."""
        target = self.target.split("?", 1)[0] if self.kind == DeliveryKind.WEBHOOK else self.target
        return {
            "id": self.id,
            "kind": self.kind.value,
            "event": self.event,
            "target": target,
            "state": self.state.value,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "created_at": iso(self.created_at),
            "last_attempt_at": iso(self.last_attempt_at),
            "next_attempt_at": iso(self.next_attempt_at)
            if self.state == DeliveryState.PENDING
            else None,
            "delivered_at": iso(self.delivered_at),
            "gives_up_at": iso(self.expires_at),
        }


FIELD_NAMES = tuple(Delivery.__dataclass_fields__)

DELIVERY_SCHEMA = obj(
    {
        "id": {
            **STRING,
            "description": "For webhooks, the webhook-id header: the same on every retry",
        },
        "kind": {"enum": [k.value for k in DeliveryKind]},
        "event": STRING,
        "target": STRING,
        "state": {"enum": [s.value for s in DeliveryState]},
        "attempts": INTEGER,
        "last_status": nullable(INTEGER),
        "last_error": nullable(STRING),
        "created_at": TIMESTAMP,
        "last_attempt_at": nullable(TIMESTAMP),
        "next_attempt_at": nullable(TIMESTAMP),
        "delivered_at": nullable(TIMESTAMP),
        "gives_up_at": TIMESTAMP,
    }
)
DELIVERIES_SCHEMA = obj({"job_id": STRING, "deliveries": array(DELIVERY_SCHEMA)})
