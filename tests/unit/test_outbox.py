"""The outbox: deliveries written with the job's end, claimed with leases, retried, and the
webhooks' signing and address rules (against a receiver thread on loopback)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from api import outbox as outbox_module
from api import webhooks
from api.config import Config
from api.delivery import DeliveryKind, NewDelivery
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


# --- what a job owes ---------------------------------------------------------------------------


def outbox_for(tmp_path, store, **settings) -> Outbox:
    config = Config.from_env(
        {"WORKSPACE_PATH": str(tmp_path), "WEBHOOK_SECRET": SECRET}, **settings
    )
    return Outbox(config, store, ObjectStorage(config))


class Waits:
    """The senders' Event: records how long a sender sleeps, and stops it after its first sleep."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox, self.seconds = outbox, []

    def wait(self, seconds: float) -> bool:
        self.seconds.append(seconds)
        self.outbox._stop.set()
        return False

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


def idle_sleep(outbox: Outbox) -> float:
    """How long the sender that looks sleeps after one look at the outbox."""
    waits = Waits(outbox)
    outbox._wake, outbox._stop = waits, threading.Event()
    outbox._run(looks=True)
    return waits.seconds[0]


def test_the_looking_sender_sleeps_long_while_nothing_is_owed(tmp_path, store, monkeypatch):
    # Every writer of a delivery wakes its own process's senders: with nothing owed, a look
    # every few seconds would only cost an idle sidecar a wake-up each time.
    outbox = outbox_for(tmp_path, store)
    assert idle_sleep(outbox) == outbox_module.IDLE_WAKE
    add_job(store, "j1", "p1", submitted=True)
    store.add_deliveries("j1", [hook()])
    store.claim_delivery("dead-process", lease_seconds=HOUR)  # its lease must end first
    assert idle_sleep(outbox) == outbox_module.IDLE_POLL  # something waits: looked at often
    monkeypatch.setattr(store, "seconds_until_next_delivery", lambda: 1 / 0)
    assert idle_sleep(outbox) == outbox_module.IDLE_POLL  # unknown: looked at again soon


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
