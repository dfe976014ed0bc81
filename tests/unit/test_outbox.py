"""The outbox: deliveries written with the job's end, claimed with leases, retried, and the
webhooks' signing and address rules (against a receiver thread on loopback)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from api import webhooks
from api.config import Config
from api.delivery import DeliveryKind, DeliveryState, NewDelivery
from api.exceptions import WebhookUrlRefused
from api.job import JobStatus
from api.object_storage import ObjectStorage
from api.outbox import Outbox, backoff
from api.outcome import Finisher
from api.sqlite_store import SQLiteJobStore
from tests.support.jobs import add_job

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo="
HOUR = 3600.0


@pytest.fixture
def store(tmp_path):
    return SQLiteJobStore(tmp_path / "jobs.sqlite3")


def hook(url="https://hooks.example.com/x", event="job.completed", retry_for=HOUR, **kw):
    return NewDelivery(DeliveryKind.WEBHOOK, event, url, retry_for, **kw)


def upload(key="k/a.png", index=0):
    return NewDelivery(
        DeliveryKind.UPLOAD, "upload", key, HOUR, payload={"index": index, "filename": "a.png"}
    )


# --- the store ---------------------------------------------------------------------------------


def test_finishing_writes_the_deliveries_once_and_only_with_the_end(store):
    add_job(store, "j1", "p1", submitted=True)
    assert store.finish("j1", JobStatus.COMPLETED, [], deliveries=[hook()]) is True
    assert store.finish("j1", JobStatus.FAILED, deliveries=[hook(event="job.failed")]) is False
    (only,) = store.deliveries("j1")
    assert (only.event, only.state, only.attempts) == ("job.completed", "pending", 0)
    assert only.id.startswith("msg_")


def test_a_delivery_that_cannot_be_written_leaves_the_job_unfinished(store):
    add_job(store, "j1", "p1", submitted=True)
    twin = hook()
    with pytest.raises(Exception, match="UNIQUE"):
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
    store._exec("UPDATE deliveries SET lease_until = 0")  # the holder died; the lease ran out
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
    store._exec("UPDATE deliveries SET next_attempt_at = 0")
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


# --- what a job owes ---------------------------------------------------------------------------


def outbox_for(tmp_path, store, **settings) -> Outbox:
    config = Config.from_env(
        {"WORKSPACE_PATH": str(tmp_path), "WEBHOOK_SECRET": SECRET}, **settings
    )
    return Outbox(config, store, ObjectStorage(config))


def test_the_plan_uploads_saved_images_then_posts_the_subscribed_event(tmp_path, store):
    outbox = outbox_for(tmp_path, store, s3_bucket="b", s3_prefix="p/")
    job = add_job(store, "j1", "p1", options={"webhook_url": "https://h.example/x"})
    images = [
        {"filename": "a.png", "subfolder": "", "type": "output", "node_id": "9"},
        {"filename": "t.png", "subfolder": "", "type": "temp", "node_id": "8"},
        {"filename": "a.png", "subfolder": "s", "type": "output", "node_id": "9"},
    ]
    owed = outbox.plan(job, JobStatus.COMPLETED, images)
    assert [(d.kind, d.target) for d in owed] == [
        ("upload", "p/j1/a.png"),
        ("upload", "p/j1/s_a.png"),
        ("webhook", "https://h.example/x"),
    ]
    assert [d.payload.get("index") for d in owed[:2]] == [0, 2]
    failed = outbox.plan(job, JobStatus.FAILED, [])
    assert [(d.kind, d.event) for d in failed] == [("webhook", "job.failed")]


def test_the_plan_honours_the_events_asked_for_and_the_server_default(tmp_path, store):
    outbox = outbox_for(tmp_path, store, webhook_url="https://default.example/h")
    quiet = add_job(store, "j1", "p1", options={"webhook_events": ["job.failed"]})
    assert outbox.plan(quiet, JobStatus.COMPLETED, []) == []
    plain = add_job(store, "j2", "p2")
    (owed,) = outbox.plan(plain, JobStatus.CANCELLED, [])
    assert (owed.target, owed.event) == ("https://default.example/h", "job.cancelled")


def test_progress_events_are_opt_in_and_throttled(tmp_path, store):
    outbox = outbox_for(tmp_path, store, webhook_progress_interval=60)
    add_job(store, "j1", "p1", options={"webhook_url": "https://h.example/x"})
    opts = {"webhook_url": "https://h.example/x", "webhook_events": ["job.progress"]}
    add_job(store, "j2", "p2", options=opts)
    outbox.progress("p1")
    outbox.progress("p2")
    outbox.progress("p2")
    assert store.deliveries("j1") == []
    assert [d.event for d in store.deliveries("j2")] == ["job.progress"]


def test_a_follow_up_that_fails_does_not_undo_the_end(store):
    add_job(store, "j1", "p1", submitted=True)

    def broken(job):
        raise RuntimeError("disk on fire")

    seen = []
    finisher = Finisher(store, plan=lambda j, s, i: [hook()], after=[broken, seen.append])
    assert finisher.finish(store.get("j1"), JobStatus.COMPLETED, []) is True
    assert seen[0].status == JobStatus.COMPLETED and len(store.deliveries("j1")) == 1
    assert finisher.finish(store.get("j1"), JobStatus.FAILED) is False
    assert len(seen) == 1


def test_backoff_doubles_with_jitter_up_to_the_cap():
    for attempt, low, high in ((1, 2.5, 5), (2, 5, 10), (3, 10, 20), (20, 30, 60)):
        for _ in range(20):
            assert low <= backoff(attempt, 5, 60) <= high
    assert backoff(1, 5, 60, retry_after=40) == 40
    assert backoff(1, 5, 60, retry_after=4000) == 60


# --- webhooks: addresses, signing, answers ------------------------------------------------------


ALLOW_NONE = webhooks.AllowList.parse("")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "http:///x",
        "https://user:pw@example.com/x",
        "http://127.0.0.1:8080/x",
        "http://10.1.2.3/x",
        "http://192.168.1.1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/x",
        "http://[::1]/x",
        "http://[fd00:ec2::254]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://0.0.0.0/x",
        "http://example.com:99999/x",
    ],
)
def test_urls_that_are_refused_when_the_request_is_made(url):
    with pytest.raises(WebhookUrlRefused):
        webhooks.check_url(url, ALLOW_NONE)


def test_the_allow_list_takes_names_and_ranges():
    allowed = webhooks.AllowList.parse("Receiver.Internal, 10.0.5.0/24,127.0.0.1")
    assert webhooks.check_url("http://10.0.5.7/x", allowed)
    assert webhooks.check_url("https://8.8.8.8/x", ALLOW_NONE)
    with pytest.raises(WebhookUrlRefused):
        webhooks.check_url("http://10.0.6.7/x", allowed)
    assert allowed.allows_name("receiver.internal.")
    # Names are checked once resolved: every address must be public or allowed.
    with pytest.raises(webhooks.TargetRefused, match=r"127\.0\.0\.1"):
        webhooks.resolve("localhost", 80, webhooks.AllowList.parse("10.0.5.0/24"))
    assert str(webhooks.resolve("localhost", 80, allowed)) == "127.0.0.1"
    assert str(webhooks.resolve("localhost", 80, webhooks.AllowList.parse("localhost")))


class Receiver:
    """A receiver thread on 127.0.0.1 answering with the statuses it is given, in turn."""

    def __init__(self, *answers: tuple[int, dict]) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.seen.append((dict(self.headers), body))
                status, headers = outer.answers.pop(0)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path="/in?token=t") -> str:
        return f"http://localhost:{self.server.server_address[1]}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(*answers):
        made.append(Receiver(*answers))
        return made[-1]

    yield make
    for r in made:
        r.close()


def sender(allowed="localhost") -> webhooks.WebhookSender:
    return webhooks.WebhookSender(SECRET, webhooks.AllowList.parse(allowed), timeout=5)


def test_a_webhook_is_signed_per_the_spec_and_sent_to_the_checked_address(receiver):
    r = receiver((204, {}))
    result = sender().send(r.url(), "msg_1", '{"event":"job.completed"}')
    assert result.delivered and result.status == 204
    ((headers, body),) = r.seen
    assert Webhook(SECRET).verify(body, headers) == {"event": "job.completed"}
    assert headers["webhook-id"] == "msg_1"
    assert headers["Host"] == f"localhost:{r.server.server_address[1]}"


@pytest.mark.parametrize(
    ("status", "headers", "retry", "wait"),
    [
        (503, {}, True, None),
        (429, {"Retry-After": "30"}, True, 30.0),
        (408, {}, True, None),
        (410, {}, False, None),
        (302, {"Location": "http://169.254.169.254/"}, False, None),
    ],
)
def test_what_each_answer_means(receiver, status, headers, retry, wait):
    r = receiver((status, headers))
    result = sender().send(r.url(), "msg_2", "{}")
    assert not result.delivered
    assert (result.retry, result.retry_after, result.status) == (retry, wait, status)
    assert len(r.seen) == 1  # a redirect is not followed


def test_a_target_that_resolves_to_a_private_address_gets_nothing(receiver):
    r = receiver((200, {}))
    result = sender(allowed="").send(r.url(), "msg_3", "{}")
    assert not result.delivered and not result.retry
    assert result.error.startswith("refused") and "127.0.0.1" in result.error
    assert r.seen == []


def test_a_receiver_that_is_down_is_retried(receiver):
    r = receiver()
    port = r.server.server_address[1]
    r.close()
    result = sender().send(f"http://localhost:{port}/x", "msg_4", "{}")
    assert not result.delivered and result.retry and result.error
