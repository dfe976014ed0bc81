"""The outbox as every store keeps it (SQLite and PostgreSQL): deliveries written with the
job's end, claimed with leases, retried within their window, redelivered, purged."""

from __future__ import annotations

import pytest

from api.delivery import DeliveryKind, DeliveryState
from api.job import JobStatus
from api.sqlite_store import SQLiteJobStore
from tests.support.jobs import add_job
from tests.unit.test_outbox import HOUR, hook, upload


def sql(store, statement: str) -> None:
    """A statement of a test's own on the store's database (moving time along)."""
    if isinstance(store, SQLiteJobStore):
        store._exec(statement)
    else:
        store._run(statement)


def test_finishing_writes_the_deliveries_once_and_only_with_the_end(store):
    add_job(store, "j1", "p1", submitted=True)
    assert store.finish("j1", JobStatus.COMPLETED, [], deliveries=[hook()]).status == "completed"
    assert store.finish("j1", JobStatus.FAILED, deliveries=[hook(event="job.failed")]) is None
    (only,) = store.deliveries("j1")
    assert (only.event, only.state, only.attempts) == ("job.completed", "pending", 0)
    assert only.id.startswith("msg_")


def test_a_delivery_that_cannot_be_written_leaves_the_job_unfinished(store):
    add_job(store, "j1", "p1", submitted=True)
    twin = hook()
    with pytest.raises(Exception, match=r"(?i)unique"):
        store.finish("j1", JobStatus.COMPLETED, [], deliveries=[twin, twin])
    assert store.get("j1").status == JobStatus.QUEUED
    assert store.deliveries("j1") == []


def test_the_end_supersedes_waiting_progress_events(store):
    add_job(store, "j1", "p1", submitted=True)
    store.add_deliveries("j1", [hook(event="job.progress")], supersede_event="job.progress")
    store.add_deliveries("j1", [hook(event="job.progress")], supersede_event="job.progress")
    states = [d.state for d in store.deliveries("j1")]
    assert states == [DeliveryState.SUPERSEDED, DeliveryState.PENDING]
    store.finish("j1", JobStatus.COMPLETED, [], deliveries=[hook()])
    assert [d.state for d in store.deliveries("j1")] == ["superseded", "superseded", "pending"]


def test_a_claim_is_exclusive_until_its_lease_runs_out(store):
    add_job(store, "j1", "p1", submitted=True)
    store.finish("j1", JobStatus.COMPLETED, [], deliveries=[hook()])
    first = store.claim_delivery("a", lease_seconds=60)
    assert first is not None and first.attempts == 1
    assert store.claim_delivery("b", lease_seconds=60) is None
    # A report from someone who does not hold the claim changes nothing.
    assert store.settle_delivery(first.id, "b", DeliveryState.DELIVERED) is False
    sql(store, "UPDATE deliveries SET lease_until = 0")  # the holder died; the lease ran out
    again = store.claim_delivery("b", lease_seconds=60)
    assert again.id == first.id and again.attempts == 2
    assert store.settle_delivery(first.id, "a", DeliveryState.DELIVERED) is False  # too late
    assert store.settle_delivery(first.id, "b", DeliveryState.DELIVERED) is True
    assert store.deliveries("j1")[0].state == DeliveryState.DELIVERED


def test_a_webhook_waits_for_its_jobs_uploads(store):
    add_job(store, "j1", "p1", submitted=True)
    store.finish("j1", JobStatus.COMPLETED, [], deliveries=[upload(), hook()])
    claimed = store.claim_delivery("a", 60)
    assert claimed.kind == DeliveryKind.UPLOAD
    assert store.claim_delivery("a", 60) is None  # the webhook is not due yet
    assert store.seconds_until_next_delivery() > 0  # only the leased upload is pending
    stored = {"index": 0, "key": "k/a.png"}
    store.settle_delivery(claimed.id, "a", DeliveryState.DELIVERED, stored_object=stored)
    assert store.get("j1").object_keys() == ["k/a.png"]
    assert store.claim_delivery("a", 60).kind == DeliveryKind.WEBHOOK


def test_retries_stop_at_the_end_of_the_window(store):
    add_job(store, "j1", "p1", submitted=True)
    store.finish("j1", JobStatus.COMPLETED, [], deliveries=[hook(retry_for=10)])
    claimed = store.claim_delivery("a", 60)
    store.settle_delivery(claimed.id, "a", DeliveryState.PENDING, 503, "down", retry_in=5)
    assert store.deliveries("j1")[0].state == DeliveryState.PENDING
    assert 4 < store.seconds_until_next_delivery() <= 5
    sql(store, "UPDATE deliveries SET next_attempt_at = 0")
    claimed = store.claim_delivery("a", 60)
    store.settle_delivery(claimed.id, "a", DeliveryState.PENDING, 503, "down", retry_in=60)
    gone = store.deliveries("j1")[0]
    assert gone.state == DeliveryState.FAILED and "gave up" in gone.last_error


def test_redelivery_keeps_the_webhook_id_and_retries_only_failed_uploads(store):
    add_job(store, "j1", "p1", submitted=True)
    store.finish("j1", JobStatus.COMPLETED, [], deliveries=[upload(), upload("k/b", 1), hook()])
    for state in (DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.DELIVERED):
        claimed = store.claim_delivery("a", 60)
        store.settle_delivery(claimed.id, "a", state)
    before = {d.id: d for d in store.deliveries("j1")}
    again = store.redeliver("j1", HOUR)
    assert {d.kind for d in again} == {DeliveryKind.UPLOAD, DeliveryKind.WEBHOOK}
    assert len(again) == 2 and all(d.id in before for d in again)
    assert all(d.state == DeliveryState.PENDING for d in again)


def test_purging_a_job_removes_its_deliveries(store):
    add_job(store, "j1", "p1", submitted=True)
    store.finish("j1", JobStatus.COMPLETED, [], deliveries=[hook()])
    store.purge(finished_before=float("inf"))
    assert store.deliveries("j1") == []
