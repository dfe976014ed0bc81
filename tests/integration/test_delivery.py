"""Results delivered, not fetched: signed webhooks with retries across a SIGKILL, refused
private targets, uploads to a real S3 server (moto_server) and /metrics, against the real
stack (CPU ComfyUI, the sidecar under gunicorn, a webhook receiver process).

One sidecar for the module (starting one costs seconds), configured for all of it: webhooks
signed with SECRET, allowed to reach the receiver by its host name only (`localhost`), first
retried 2 to 4 seconds after a failure, and uploads to moto.
"""

from __future__ import annotations

import collections
import json
from datetime import UTC, datetime

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook

from api.config import Config
from stack.__main__ import nginx_values
from stack.nginx import NginxProcess
from tests.integration.conftest import Api, start_sidecar
from tests.support.comfyui import free_port
from tests.support.faulty_proxy import FaultyProxy
from tests.support.services import S3Server, WebhookReceiver
from tests.support.sidecar import wait_for

SECRET = "whsec_" + "C2FtcGxlLXNlY3JldC1mb3ItdGhlLXNpZGVjYXItdGVzdHM="
SLEEP = {"workflow": "sidecar_test_sleep"}
QUICK = {"workflow": "pipeline_check", "width": 64, "height": 64}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    # Fails the first two attempts of every event: each event needs three.
    process = WebhookReceiver(tmp_path_factory.mktemp("receiver"), SECRET, fail_first=2).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def delivering(comfy, s3, tmp_path_factory):
    """(process, Api) of a sidecar that signs webhooks and uploads to moto."""
    proxy = FaultyProxy("127.0.0.1", comfy.port)
    process = start_sidecar(
        tmp_path_factory.mktemp("delivering"),
        comfy,
        proxy.port,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_ALLOWED_HOSTS="localhost",
        DELIVERY_RETRY_BASE="4",
        **s3.sidecar_env(),
    )
    yield process, Api(process.url)
    process.stop()
    proxy.stop()


def deliveries(api: Api, job_id: str) -> list[dict]:
    response = api.get(f"/api/jobs/{job_id}/deliveries")
    assert response.status_code == 200, response.text
    return response.json()["deliveries"]


def webhook_of(api: Api, job_id: str) -> dict | None:
    found = [d for d in deliveries(api, job_id) if d["kind"] == "webhook"]
    return found[0] if found else None


def test_each_event_arrives_once_after_dedup_signed_across_a_sigkill(delivering, receiver):
    process, api = delivering
    hook = {"webhook_url": receiver.url("/hook")}
    # The three end within a second of each other: the long one is cancelled, the other two
    # were waiting behind it.
    stopped = api.generate(prompt="stopped", steps=300, seconds_per_step=0.1, **SLEEP, **hook)
    wait_for(
        lambda: api.status(stopped["job_id"])["status"] == "processing", 30, 0.05, "the long job"
    )
    done = api.generate(prompt="done", **QUICK, **hook)
    broken = api.generate(
        prompt="broken", steps=3, seconds_per_step=0, fail_at_step=1, **SLEEP, **hook
    )
    assert api.session.delete(api.base + f"/api/queue/{stopped['job_id']}", timeout=30).ok
    expected = {
        done["job_id"]: "job.completed",
        broken["job_id"]: "job.failed",
        stopped["job_id"]: "job.cancelled",
    }
    for job_id in expected:
        api.wait_final(job_id)

    # Between attempts: every event's first attempt was answered 503 and recorded, and the
    # next one is a second or more away. Then the whole sidecar dies.
    def first_attempts_recorded():
        hooks = [webhook_of(api, job_id) for job_id in expected]
        return all(h and h["attempts"] == 1 and h["last_status"] == 503 for h in hooks)

    wait_for(first_attempts_recorded, 30, 0.02, "each webhook's first, failed attempt")
    process.kill()
    process.start()

    def all_delivered():
        return all(webhook_of(api, job_id)["state"] == "delivered" for job_id in expected)

    wait_for(all_delivered, 60, 0.1, "every webhook to be delivered after the restart")
    seen = [r for r in receiver.requests() if r["path"] == "/hook"]
    assert all(r["verified"] for r in seen), seen
    by_id = collections.defaultdict(list)
    for request in seen:
        by_id[request["id"]].append(request)
    # Three attempts of each event, all with the event's one id; one accepted.
    assert sorted(len(attempts) for attempts in by_id.values()) == [3, 3, 3]
    accepted = {i: [r for r in rs if r["answered"] == 200] for i, rs in by_id.items()}
    assert all(len(ok) == 1 for ok in accepted.values())
    events = {ok[0]["body"]["job_id"]: ok[0]["body"]["event"] for ok in accepted.values()}
    assert events == expected
    for job_id in expected:
        hook_row = webhook_of(api, job_id)
        assert hook_row["attempts"] == 3 and hook_row["last_status"] == 200
        assert hook_row["id"] in by_id
    completed = next(
        ok[0]["body"] for ok in accepted.values() if ok[0]["body"]["job_id"] == done["job_id"]
    )
    assert completed["status"] == "completed" and completed["output_image"]
    # The upload went first, so the event carries the image's URL.
    assert len(completed["output_urls"]) == 1


def test_the_receiver_check_refuses_a_forged_body(receiver):
    """The check the receiver (and docs/integrations.md) uses is not a formality."""
    wh = Webhook(SECRET)
    now = datetime.now(UTC)
    body = '{"event":"job.completed","job_id":"x"}'
    headers = {
        "webhook-id": "msg_x",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": wh.sign("msg_x", now, body),
    }
    forged = requests.post(
        receiver.url("/forged", "127.0.0.1"),
        data=body.replace("completed", "failed"),
        headers=headers,
        timeout=10,
    )
    assert forged.status_code == 400
    (record,) = [r for r in receiver.requests() if r["path"] == "/forged"]
    assert record["verified"] is False


def test_a_private_target_is_refused(delivering, receiver):
    _, api = delivering
    literal = api.post(
        "/api/generate",
        json={"prompt": "x", **QUICK, "webhook_url": receiver.url("/p", "127.0.0.1")},
    )
    assert literal.status_code == 400
    assert literal.json()["code"] == "webhook_url_refused"
    # 127.1 is 127.0.0.1 spelled so that it passes for a host name: refused once resolved.
    job = api.generate(prompt="sneaky", **QUICK, webhook_url=receiver.url("/sneaky", "127.1"))
    assert api.wait_final(job["job_id"])["status"] == "completed"
    hook = wait_for(
        lambda: (h := webhook_of(api, job["job_id"])) and h["state"] == "failed" and h,
        30,
        0.05,
        "the refused webhook",
    )
    assert hook["attempts"] == 1
    assert "refused" in hook["last_error"] and "127.0.0.1" in hook["last_error"]
    assert not [r for r in receiver.requests() if r["path"] == "/sneaky"]


def test_uploads_land_in_s3_and_the_presigned_url_returns_the_same_bytes(delivering, s3):
    _, api = delivering
    job = api.generate(prompt="stored", **QUICK)
    final = api.wait_final(job["job_id"])
    assert final["status"] == "completed"
    status = wait_for(
        lambda: (s := api.status(job["job_id"]))["output_urls"] and s,
        30,
        0.05,
        "the upload",
    )
    local = api.get(f"/api/image/{final['output_image']}")
    assert local.status_code == 200 and local.content.startswith(b"\x89PNG")
    (url,) = status["output_urls"]
    assert "X-Amz-Signature=" in url and url.startswith(s3.url)
    fetched = requests.get(url, timeout=30)
    assert fetched.status_code == 200
    assert fetched.content == local.content
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"outputs/{job['job_id']}/")
    (entry,) = listed["Contents"]
    assert entry["Key"] == f"outputs/{job['job_id']}/{final['output_image']}"
    body = s3.client().get_object(Bucket=s3.bucket, Key=entry["Key"])
    assert body["ContentType"] == "image/png"
    (upload,) = [d for d in deliveries(api, job["job_id"]) if d["kind"] == "upload"]
    assert upload["state"] == "delivered" and upload["attempts"] == 1


def scrape(api: Api) -> dict[tuple[str, tuple], float]:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(values: dict, name: str, **labels) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_count_the_jobs_run(delivering):
    _, api = delivering
    before = scrape(api)
    quick = [api.generate(prompt=f"m{i}", **QUICK) for i in range(3)]
    # Jobs that report progress: their start is always seen, so they are timed.
    slept = api.generate(prompt="ms", steps=3, seconds_per_step=0.05, **SLEEP)
    failing = api.generate(prompt="mf", steps=3, seconds_per_step=0.05, fail_at_step=1, **SLEEP)
    for job in [*quick, slept, failing]:
        api.wait_final(job["job_id"])
    # The four completed jobs' images are uploaded (and counted) by the outbox after they end.
    wait_for(
        lambda: all(api.status(j["job_id"])["output_urls"] for j in [*quick, slept]),
        30,
        0.05,
        "uploads",
    )
    after = scrape(api)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("sidecar_jobs_created_total", workflow="pipeline_check") == 3
    assert delta("sidecar_jobs_created_total", workflow="sidecar_test_sleep") == 2
    assert delta("sidecar_jobs_finished_total", workflow="pipeline_check", status="completed") == 3
    assert delta("sidecar_jobs_finished_total", workflow="sidecar_test_sleep", status="failed") == 1
    assert (
        delta("sidecar_jobs_finished_total", workflow="sidecar_test_sleep", status="completed") == 1
    )
    assert delta("sidecar_job_run_seconds_count", workflow="sidecar_test_sleep") == 2
    assert delta("sidecar_job_run_seconds_sum", workflow="sidecar_test_sleep") >= 0.15
    assert delta("sidecar_job_queue_wait_seconds_count", workflow="sidecar_test_sleep") == 2
    assert delta("sidecar_deliveries_total", kind="upload", outcome="delivered") == 4
    assert (
        delta("sidecar_http_requests_total", method="POST", route="/api/generate", status="202")
        == 5
    )
    assert value(after, "sidecar_jobs_unfinished", state="queued") == 0
    assert value(after, "sidecar_jobs_unfinished", state="processing") == 0
    assert value(after, "sidecar_comfyui_reachable") == 1
    assert value(after, "sidecar_tracker_websocket_connected") == 1
    assert value(after, "sidecar_tracker_websocket_connects_total") >= 1
    # Passes run every RECONCILE_INTERVAL (or at most once a second on queue changes): the
    # jobs above can all end between two of them.
    passes = value(before, "sidecar_tracker_reconciles_total", outcome="ok")
    wait_for(
        lambda: value(scrape(api), "sidecar_tracker_reconciles_total", outcome="ok") > passes,
        30,
        0.1,
        "a reconciliation counted",
    )


def test_nginx_serves_the_uploads_read_only_under_objects(delivering, s3, tmp_path):
    """docker-compose.minio.yml's nginx part, with moto in MinIO's place: the uploaded image
    under /objects/<key> on the API's host, and nothing but reads."""
    process, api = delivering
    values = nginx_values(
        Config.from_env(process.env),
        {"STACK_HTTP_PORT": str(free_port()), "STACK_COMFYUI_UI_PORT": str(free_port())},
    )
    values.update(
        NGINX_OBJECTS_ENABLED="on",
        NGINX_OBJECTS_UPSTREAM=f"127.0.0.1:{s3.port}",
        NGINX_OBJECTS_BUCKET=s3.bucket,
    )
    # What `mc anonymous set download` does for the overlay's bucket.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": ["*"]},
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{s3.bucket}/*"],
            }
        ],
    }
    s3.client().put_bucket_policy(Bucket=s3.bucket, Policy=json.dumps(policy))
    nginx = NginxProcess(tmp_path / "nginx", values).start()
    try:
        job = api.generate(prompt="public", **QUICK)
        final = api.wait_final(job["job_id"])
        wait_for(lambda: api.status(job["job_id"])["output_urls"], 30, 0.05, "the upload")
        key = f"outputs/{job['job_id']}/{final['output_image']}"
        served = requests.get(f"{nginx.url}/objects/{key}", timeout=10)
        assert served.status_code == 200, served.text
        assert served.content == api.get(f"/api/image/{final['output_image']}").content
        assert requests.put(f"{nginx.url}/objects/{key}", data=b"x", timeout=10).status_code == 403
    finally:
        nginx.stop()
    # Off (the shipped default), the location answers 404.
    values["NGINX_OBJECTS_ENABLED"] = "off"
    off = NginxProcess(tmp_path / "nginx-off", values).start()
    try:
        assert requests.get(f"{off.url}/objects/{key}", timeout=10).status_code == 404
    finally:
        off.stop()
