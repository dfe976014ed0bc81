"""A job's webhooks and uploads: what was attempted (GET .../deliveries), and sending again."""

from flask import Blueprint, jsonify

from api import auth, outbox, sidecar, tenancy
from api.auth import requires
from api.delivery import DELIVERIES_SCHEMA, DELIVERY_SCHEMA
from api.exceptions import NotFound
from api.openapi import JOB_ID, operation
from api.schemas import STRING, array, obj

bp = Blueprint("deliveries", __name__)


@bp.get("/api/jobs/<job_id>/deliveries")
@operation(
    "A job's webhooks and uploads: attempts, the receiver's last status, the next retry",
    {200: DELIVERIES_SCHEMA},
    errors=(404,),
    parameters=[JOB_ID],
)
def job_deliveries(job_id: str):
    s = sidecar.current()
    tenancy.check_visible(s.store, auth.caller(), job_id)
    found = s.store.deliveries(job_id)
    return jsonify(job_id=job_id, deliveries=[d.to_public() for d in found])


@bp.post("/api/jobs/<job_id>/redeliver")
@requires("admin")
@operation(
    "Send a job's webhooks again (same webhook-id) and retry its uploads that failed",
    {
        202: (
            "Scheduled now",
            obj({"job_id": STRING, "message": STRING, "deliveries": array(DELIVERY_SCHEMA)}),
            "application/json",
        )
    },
    errors=(404,),
    parameters=[JOB_ID],
)
def redeliver(job_id: str):
    s = sidecar.current()
    if s.store.version(job_id) is None:
        raise NotFound()
    again = outbox.redeliver(s.store, job_id, s.outbox.retry_for, s.outbox.wake)
    if not again:
        raise NotFound(f"Job {job_id} has no webhook or upload to send again")
    return jsonify(
        job_id=job_id,
        message=f"{len(again)} deliveries scheduled",
        deliveries=[d.to_public() for d in again],
    ), 202
